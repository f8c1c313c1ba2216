"""The worker process: owns the accelerator, loads each pipeline once, claims and runs jobs.

Loop: apply a pending clear-cache -> claim the next job in fair order -> run it with progress
per step and cancellation between steps -> write the MP4 -> record cost, timing and the webhook
in the same transaction as the terminal status.

A heartbeat thread renews the lease of the running job, notices cancel requests or a lost lease
and publishes which models this worker could load; a reaper thread requeues the jobs of dead
workers every ``reaper_interval`` seconds, whether or not this worker is busy; a webhook thread
delivers the outbox. A model that fails to load does not stop the worker: it is marked
unavailable (``worker/models.py``) and its jobs fail at once with ``model_unavailable``.

SIGTERM/SIGINT stop the worker between steps: the job in hand goes back to the queue without
using up an attempt.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from aiprod.core.errors import AiprodError, GenerationCanceled
from aiprod.core.logging import job_error_message
from aiprod.core.model_files import registry_problems
from aiprod.core.registry import ModelEntry, Registry, load_registry
from aiprod.core.settings import Settings
from aiprod.db import queue
from aiprod.db.models import Job
from aiprod.db.repositories import StateRepository, TimingRepository, WorkerRepository
from aiprod.db.session import make_engine, make_sessionmaker, session_scope
from aiprod.jobs import transitions
from aiprod.jobs.gpu import report_gpu_stats
from aiprod.jobs.model_state import ModelState, publish_model_states
from aiprod.jobs.schema import JobParams
from aiprod.jobs.storage import Storage, open_storage, output_key
from aiprod.jobs.webhooks import WebhookDispatcher
from aiprod.worker.models import ModelSlots, ModelUnavailable, classify_crash
from aiprod.worker.priorities import Priorities

log = logging.getLogger("aiprod.worker")


CACHE_EPOCH = "cache_epoch"


@dataclass
class _Current:
    """The job in hand, shared between the main loop and the heartbeat thread."""

    job_id: str
    cancel: threading.Event = field(default_factory=threading.Event)
    lost: threading.Event = field(default_factory=threading.Event)


class Worker:
    def __init__(
        self,
        settings: Settings,
        *,
        worker_id: str | None = None,
        max_jobs: int | None = None,
        exit_when_idle: bool = False,
        webhooks: bool = True,
        preload: bool = True,
    ) -> None:
        self.settings = settings
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.max_jobs = max_jobs
        self.preload = preload
        self.exit_when_idle = exit_when_idle
        self.engine = make_engine(settings.resolved_database_url)
        self.sessions: sessionmaker[Session] = make_sessionmaker(self.engine)
        self.registry: Registry = load_registry(settings.models_file)
        self.storage: Storage = open_storage(settings)
        self.secret = settings.resolved_secret_key()
        self.priorities = Priorities(settings.worker_nice)
        self.models = ModelSlots(self._load)
        self.pipelines: dict[str, Any] = self.models.pipelines
        self.stop_event = threading.Event()
        self.current: _Current | None = None
        self.cache_epoch = 0
        self.jobs_done = 0
        self._hb_thread: threading.Thread | None = None
        self._reap_thread: threading.Thread | None = None
        self._published_models: dict[str, ModelState] | None = None
        self._published_at = 0.0
        self.dispatcher = (
            WebhookDispatcher(
                sessions=self.sessions, settings=settings, secret=self.secret, owner=self.id
            )
            if webhooks
            else None
        )

    # ------------------------------------------------------------------ lifecycle
    def install_signal_handlers(self) -> None:
        def _stop(signum: int, _frame: Any) -> None:
            log.info("worker %s: signal %d, stopping after the current step", self.id, signum)
            self.stop_event.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)

    def run(self) -> int:
        """Serve jobs until stopped; returns the number of jobs finished."""
        with session_scope(self.sessions) as s:
            WorkerRepository(s).register(
                worker_id=self.id,
                hostname=socket.gethostname(),
                pid=os.getpid(),
                device=self.settings.device,
            )
            self.cache_epoch = StateRepository(s).get_int(CACHE_EPOCH)
            WorkerRepository(s).seen(self.id, cache_epoch=self.cache_epoch)
        log.info("worker %s started (models: %s)", self.id, ", ".join(self.model_ids))
        # The reaper runs from the start, also while the default model loads.
        self._reap_thread = threading.Thread(target=self._reaper_loop, name="reaper", daemon=True)
        self._reap_thread.start()
        # Entries whose files are broken (core/model_files.py) fail their load at once, before
        # any model loads: they are marked unavailable and published, the others are served.
        for model_id in registry_problems(self.registry):
            if model_id in self.model_ids:
                try:
                    self.pipeline(self.registry.get(model_id))
                except ModelUnavailable:
                    pass
        if self.preload:
            # Load the default model before claiming anything, so no lease runs during a load;
            # the worker shows as "starting" until then. A failed load marks the model
            # unavailable (its jobs fail fast) and the worker serves the other models.
            try:
                self.pipeline(self.registry.default_entry)
            except ModelUnavailable:
                pass
        with session_scope(self.sessions) as s:
            WorkerRepository(s).seen(self.id, status="idle")
            self._maybe_publish_models(s, force=True)
        self._hb_thread = threading.Thread(
            target=self._heartbeat_loop, name="heartbeat", daemon=True
        )
        self._hb_thread.start()
        if self.dispatcher is not None:
            self.dispatcher.start()
        try:
            while not self.stop_event.is_set():
                if self.max_jobs is not None and self.jobs_done >= self.max_jobs:
                    break
                self._maybe_clear_cache()
                self._retry_failed_models()
                if not self.step():
                    if self.exit_when_idle:
                        break
                    self.stop_event.wait(self.settings.worker_poll_interval)
        finally:
            self.stop_event.set()
            if self.dispatcher is not None:
                self.dispatcher.stop()
            try:
                with session_scope(self.sessions) as s:
                    WorkerRepository(s).seen(self.id, status="stopped", current_job_id=None)
            except Exception:
                log.exception("could not mark worker %s stopped", self.id)
            self.priorities.shutdown()
            self.engine.dispose()
        log.info("worker %s stopped after %d jobs", self.id, self.jobs_done)
        return self.jobs_done

    @property
    def model_ids(self) -> list[str]:
        return [m.id for m in self.registry.models]

    # ------------------------------------------------------------------ background duties
    def _heartbeat_loop(self) -> None:
        while not self.stop_event.wait(self.settings.heartbeat_interval):
            try:
                self.heartbeat()
            except Exception:
                log.exception("heartbeat failed")

    def heartbeat(self) -> None:
        cur = self.current
        with session_scope(self.sessions) as s:
            if cur is not None:
                st = queue.heartbeat(
                    s,
                    job_id=cur.job_id,
                    worker_id=self.id,
                    lease_seconds=self.settings.lease_seconds,
                )
                self._apply(cur, st)
            WorkerRepository(s).seen(
                self.id,
                status="busy" if cur is not None else "idle",
                current_job_id=cur.job_id if cur is not None else None,
            )
            self._maybe_publish_models(s)
            report_gpu_stats(s, self.id)  # NVML memory/util/temperature; nothing without a GPU

    @staticmethod
    def _apply(cur: _Current, st: queue.LeaseState) -> None:
        if not st.owned:
            cur.lost.set()
        if st.cancel_requested:
            cur.cancel.set()

    def _reaper_loop(self) -> None:
        """Requeue dead workers' jobs on a schedule of its own, so recovery never waits for
        this worker to finish a job. Every worker runs one; the requeue is a conditional
        UPDATE, so two reapers never requeue a job twice."""
        failing = False  # log a failure once, and the recovery, not every pass
        while not self.stop_event.is_set():
            try:
                reap(self.sessions, self.settings)
            except Exception as exc:
                if not failing:
                    log.warning("reaper pass failed: %s: %s", type(exc).__name__, exc)
                failing = True
            else:
                if failing:
                    log.info("reaper passes again")
                failing = False
            self.stop_event.wait(self.settings.reaper_interval)

    def _maybe_clear_cache(self) -> None:
        with session_scope(self.sessions) as s:
            epoch = StateRepository(s).get_int(CACHE_EPOCH)
        if epoch == self.cache_epoch:
            return
        default = self.registry.default
        self.models.failed.clear()  # models that failed to load are tried again on their next job
        for model_id in list(self.pipelines):
            pipe = self.pipelines[model_id]
            if hasattr(pipe, "clear_cache"):
                pipe.clear_cache()
            if model_id != default:  # unload idle non-default models entirely
                del self.pipelines[model_id]
        if "torch" in sys.modules:
            from aiprod import engine

            engine.clear_cache()
        self.cache_epoch = epoch
        with session_scope(self.sessions) as s:
            WorkerRepository(s).seen(self.id, cache_epoch=epoch)
        log.info("worker %s cleared its cache (epoch %d)", self.id, epoch)

    # ------------------------------------------------------------------ jobs
    def _load(self, entry: ModelEntry) -> Any:
        from aiprod import engine  # torch lives behind this import

        return engine.load_pipeline(entry, device=self.settings.device)

    def pipeline(self, entry: ModelEntry) -> Any:
        """The entry's loaded pipeline (loaded on first use). Raises ``ModelUnavailable`` when
        it fails to load or is waiting out its retry backoff; the failure is published at once."""
        try:
            return self.models.get(entry)
        except ModelUnavailable:
            self._publish_models()
            raise

    def _retry_failed_models(self) -> None:
        """Between jobs: load again the models whose retry backoff has ended."""
        for model_id in self.models.due():
            try:
                self.pipeline(self.registry.get(model_id))
            except ModelUnavailable:
                continue  # published by pipeline(); the next try is further away
            self._publish_models()

    def _publish_models(self) -> None:
        try:
            with session_scope(self.sessions) as s:
                self._maybe_publish_models(s, force=True)
        except Exception as exc:  # the heartbeat publishes again
            log.warning("could not publish model states: %s", exc)

    def _maybe_publish_models(self, s: Session, *, force: bool = False) -> None:
        """Write this worker's model states when they changed, and at least four times per
        live-worker window (the API ignores states older than that window)."""
        states = self.models.states()
        now = time.monotonic()
        window = self.settings.worker_live_seconds or 2.0 * self.settings.lease_seconds
        if force or states != self._published_models or now - self._published_at > window / 4:
            publish_model_states(s, self.id, states)
            self._published_models, self._published_at = states, now

    def step(self) -> bool:
        """Claim and run one job; False when the queue had nothing for this worker."""
        with session_scope(self.sessions) as s:
            job = transitions.claim(
                s,
                worker_id=self.id,
                lease_seconds=self.settings.lease_seconds,
                models=self.model_ids,
                settings=self.settings,
            )
            if job is None:
                return False
            s.expunge(job)
            WorkerRepository(s).seen(self.id, status="busy", current_job_id=job.id)
        self.current = _Current(job.id)
        try:
            self.run_job(job)
        finally:
            self.current = None
            self.jobs_done += 1
        return True

    def _request(self, job: Job) -> Any:
        from aiprod.engine.types import GenerationRequest

        params = JobParams.from_stored(job.params)
        image = self.storage.read_bytes(job.input_image_path) if job.input_image_path else None
        return GenerationRequest(**params.as_dict(), image=image)

    def run_job(self, job: Job) -> None:
        cur = self.current
        assert cur is not None
        log.info("job %s: attempt %d on %s", job.id, job.attempts, self.id)
        delay = self.settings.worker_step_delay

        def write_progress(fraction: float) -> queue.LeaseState:
            with session_scope(self.sessions) as s:
                return queue.set_progress(s, job_id=job.id, worker_id=self.id, progress=fraction)

        def on_progress(fraction: float) -> None:
            self._apply(cur, self.priorities.write(lambda: write_progress(fraction)))
            if delay and fraction < 1.0 and not (cur.cancel.is_set() or cur.lost.is_set()):
                self.stop_event.wait(delay)

        def should_cancel() -> bool:
            return cur.cancel.is_set() or cur.lost.is_set() or self.stop_event.is_set()

        t0 = time.perf_counter()
        try:
            entry = self.registry.get(job.model)
            pipe = self.pipeline(entry)
            t0 = time.perf_counter()  # GPU time = generation + encode, not model loading
            key = output_key(job.id)

            def generate() -> tuple[bytes, float]:
                from aiprod.core.media import write_mp4

                request = self._request(job)
                video = pipe(request, on_progress=on_progress, should_cancel=should_cancel)
                # S3: written to a local temp file, then uploaded (the object appears whole).
                with self.storage.staged_path(key) as staged:
                    path = write_mp4(
                        staged,
                        video.frames,
                        video.fps,
                        audio=video.audio,
                        sample_rate=video.audio_sample_rate,
                    )
                    return path.read_bytes(), time.perf_counter() - t0

            data, seconds = self.priorities.generate(generate)
            self._succeed(job, entry, key, data, seconds)
        except GenerationCanceled:
            self._canceled(job, cur, time.perf_counter() - t0)
        except ModelUnavailable as exc:  # fail fast: retrying the job would not load it either
            if cur.lost.is_set():
                return
            self._failed(job, exc.code, exc.message, permanent=True)
        except AiprodError as exc:
            if cur.lost.is_set():
                return
            permanent = 400 <= exc.status_code < 500
            self._failed(job, exc.code, exc.message, permanent=permanent)
        except Exception as exc:  # a crash in the engine: deterministic fails now, else retry
            log.exception("job %s crashed", job.id)
            if cur.lost.is_set():
                return
            code, message, permanent = classify_crash(job.model, exc)
            self._failed(job, code, message, permanent=permanent)

    def _succeed(self, job: Job, entry: ModelEntry, key: str, data: bytes, seconds: float) -> None:
        with session_scope(self.sessions) as s:
            done = transitions.succeed(
                s,
                job_id=job.id,
                worker_id=self.id,
                settings=self.settings,
                output_path=key,
                output_bytes=len(data),
                output_sha256=hashlib.sha256(data).hexdigest(),
                gpu_seconds=seconds,
                cost_usd=round(seconds * entry.price_per_gpu_second, 6),
            )
            if done is None:
                log.warning("job %s: lease lost before finishing; result discarded", job.id)
                return
            transitions.finish_deleted(s, done, storage=self.storage)
            TimingRepository(s).record(
                model=entry.id,
                model_version=entry.version,
                **JobParams.from_stored(job.params).shape(),
                seconds=seconds,
            )
            WorkerRepository(s).seen(
                self.id, status="idle", current_job_id=None, jobs_done=self.jobs_done + 1
            )
        log.info("job %s succeeded in %.2fs", job.id, seconds)

    def _canceled(self, job: Job, cur: _Current, seconds: float) -> None:
        if cur.lost.is_set():
            log.warning("job %s: lease lost mid-run; stopped", job.id)
            return
        with session_scope(self.sessions) as s:
            if cur.cancel.is_set():
                entry = self.registry.get(job.model)
                transitions.cancel_running(
                    s,
                    job_id=job.id,
                    worker_id=self.id,
                    settings=self.settings,
                    gpu_seconds=seconds,
                    cost_usd=round(seconds * entry.price_per_gpu_second, 6),
                )
                log.info("job %s canceled", job.id)
            else:  # the worker is stopping: hand the job back without using an attempt
                transitions.hand_back(s, job_id=job.id, worker_id=self.id)
                log.info("job %s requeued (worker stopping)", job.id)

    def _failed(self, job: Job, code: str, message: str, *, permanent: bool) -> None:
        public = job_error_message(message)  # the client sees no server paths; the log does
        if public != message:
            log.warning("job %s: %s: %s", job.id, code, message)
        message = public
        with session_scope(self.sessions) as s:
            transitions.fail_attempt(
                s,
                job=job,
                worker_id=self.id,
                settings=self.settings,
                code=code,
                message=message,
                permanent=permanent,
            )


def reap(sessions: sessionmaker[Session], settings: Settings) -> tuple[int, int]:
    """Requeue (or, out of attempts, fail) running jobs whose lease expired.

    Returns (requeued, failed). Safe to run from many workers at once (rows are locked).
    """
    with session_scope(sessions) as s:
        return transitions.reap_expired(s, settings=settings)
