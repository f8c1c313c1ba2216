"""Webhook isolation: how long one key's webhook waits behind another key's dead receivers.

For each count N: N receivers of key A on loopback that accept connections and never answer
(the worst case: each holds a delivery for the whole ``webhook_timeout``), their deliveries
due first; after ``--head-start`` seconds (A's deliveries are in flight) one delivery of key B
to a live loopback receiver is written. The figure is the time from that write to the live
receiver getting the POST. The dispatcher runs in this process with the production settings
(``webhook_timeout`` 5 s, poll interval 1 s) on a fresh SQLite database; nothing leaves
loopback.

    .venv/bin/python benchmarks/webhook_isolation.py                    # N = 12 and 40, 3 runs
    .venv/bin/python benchmarks/webhook_isolation.py --counts 12 40 100 --repeats 5

Prints a table and writes JSON (``--json``, default benchmarks/results/webhook_isolation.json).
It only uses what every version of the dispatcher has, so it can measure an older checkout too
(``PYTHONPATH=<old checkout>/src``).
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import statistics
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiprod
from aiprod.core.settings import Settings
from aiprod.db.migrate import upgrade
from aiprod.db.models import Job, WebhookDelivery, new_id, utcnow
from aiprod.db.repositories import ApiKeyRepository
from aiprod.db.session import make_engine, make_sessionmaker, session_scope
from aiprod.jobs.webhooks import WebhookDispatcher


class _Live(ThreadingHTTPServer):
    arrived: threading.Event


def _live() -> _Live:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["content-length"]))
            self.send_response(200)
            self.end_headers()
            self.server.arrived.set()  # type: ignore[attr-defined]

        def log_message(self, *args: Any) -> None:
            pass

    srv = _Live(("127.0.0.1", 0), Handler)
    srv.arrived = threading.Event()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def _key(sessions: Any) -> tuple[str, str]:
    with session_scope(sessions) as s:
        key = ApiKeyRepository(s).create(key_hash=new_id(), prefix="p", name="k").id
        job = Job(
            api_key_id=key, prompt="p", model="m", model_version="1", params={}, status="succeeded"
        )
        s.add(job)
        s.flush()
        return key, job.id


def _deliver(sessions: Any, key: tuple[str, str], url: str) -> None:
    with session_scope(sessions) as s:
        s.add(
            WebhookDelivery(
                job_id=key[1],
                api_key_id=key[0],
                url=url,
                event_type="job.succeeded",
                payload="{}",
                status="pending",
                next_attempt_at=utcnow(),
                created_at=utcnow(),
            )
        )


def run_once(dead: int, head_start: float, timeout: float) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), webhook_allow_networks="127.0.0.0/8")
        upgrade(settings.resolved_database_url)
        engine = make_engine(settings.resolved_database_url)
        sessions = make_sessionmaker(engine)
        hung = []
        for _ in range(dead):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            s.listen(64)
            hung.append(s)
        live = _live()
        a, b = _key(sessions), _key(sessions)
        for s in hung:
            _deliver(sessions, a, f"http://127.0.0.1:{s.getsockname()[1]}/a")
        d = WebhookDispatcher(sessions=sessions, settings=settings, secret="s" * 32, owner="bench")
        d.start()
        try:
            time.sleep(head_start)
            t0 = time.monotonic()
            _deliver(sessions, b, f"http://127.0.0.1:{live.server_address[1]}/b")
            if not live.arrived.wait(timeout):
                return float("inf")
            return time.monotonic() - t0
        finally:
            d.stop()
            d.pool.shutdown(wait=True)  # the hung deliveries time out before the database goes
            live.shutdown()
            for s in hung:
                s.close()
            engine.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--counts", type=int, nargs="+", default=[12, 40])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--head-start", type=float, default=1.5)
    ap.add_argument("--timeout", type=float, default=180.0)
    ap.add_argument("--json", default="benchmarks/results/webhook_isolation.json")
    args = ap.parse_args()
    results = []
    print(f"{'dead receivers':>15} {'median s':>9} {'max s':>7}  runs")
    for n in args.counts:
        delays = [run_once(n, args.head_start, args.timeout) for _ in range(args.repeats)]
        row = {
            "dead_receivers": n,
            "delays_s": [round(x, 3) for x in delays],
            "median_s": round(statistics.median(delays), 3),
            "max_s": round(max(delays), 3),
        }
        results.append(row)
        print(
            f"{n:>15} {row['median_s']:>9.2f} {row['max_s']:>7.2f}  "
            + " ".join(f"{x:.2f}" for x in delays)
        )
    out = {
        "benchmark": "webhook_isolation",
        "aiprod": str(Path(aiprod.__file__).parent),
        "machine": platform.platform(),
        "webhook_timeout_s": Settings().webhook_timeout,
        "head_start_s": args.head_start,
        "results": results,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
