"""``CurriculumVideoDataset``: a torch Dataset over a clip manifest.

- **Frame sampling**: ``uniform`` (``num_frames`` evenly spread over the clip), ``random_window``
  (a contiguous run at ``stride``, placed at random; reproducible per ``seed`` and epoch via
  :meth:`set_epoch`) or ``stride`` (every ``stride``-th frame from the start).
- **Buckets**: ``(width, height, num_frames)`` triples; each clip goes to the bucket whose aspect
  ratio is closest to its own, is scaled to cover it and centre-cropped. Use
  :class:`BucketBatchSampler` so a batch holds one bucket.
- **Cache** (optional): VAE latents and text embeddings, computed by the encoders you pass and
  stored as safetensors under ``cache_dir``. The key is a hash of the clip's content (SHA-256,
  plus file size and mtime), the frame indices, the bucket and the encoder's ``name`` and
  ``version``: a new encoder version, a re-normalized clip or another sampling never reads an
  old entry. A cache hit needs no video decode at all.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from aiprod.core.errors import AiprodError
from aiprod.data._fs import atomic_write
from aiprod.data.manifest import ACCEPTED, ClipRecord, read_manifest

Sampling = Literal["uniform", "random_window", "stride"]
SAMPLINGS: tuple[str, ...] = ("uniform", "random_window", "stride")


class Encoder(Protocol):
    """A VAE or text encoder as the dataset's cache sees it."""

    name: str
    version: str

    def __call__(self, x: Any) -> torch.Tensor: ...


@dataclass(frozen=True)
class Bucket:
    width: int
    height: int
    num_frames: int

    @property
    def aspect(self) -> float:
        return self.width / self.height


def sample_indices(
    total: int,
    num_frames: int,
    *,
    sampling: str,
    stride: int = 1,
    rng: np.random.Generator | None = None,
) -> list[int]:
    """Frame indices for a clip of ``total`` frames; short clips repeat their last frame."""
    if total < 1:
        raise ValueError("clip has no frames")
    if sampling == "uniform":
        return np.linspace(0, total - 1, num=num_frames).round().astype(int).tolist()
    span = (num_frames - 1) * stride + 1
    if sampling == "stride":
        start = 0
    elif sampling == "random_window":
        start = int((rng or np.random.default_rng()).integers(0, max(1, total - span + 1)))
    else:
        raise ValueError(f"sampling={sampling!r}: choose one of {list(SAMPLINGS)}")
    return [min(start + k * stride, total - 1) for k in range(num_frames)]


def _fit_size(w: int, h: int, bucket: Bucket) -> tuple[int, int]:
    """Scaled size that covers the bucket (then centre-cropped), keeping aspect."""
    scale = max(bucket.width / w, bucket.height / h)
    return max(bucket.width, int(np.ceil(w * scale))), max(bucket.height, int(np.ceil(h * scale)))


def decode_frames(
    path: str | Path,
    indices: Sequence[int],
    *,
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Decode the frames at ``indices`` (decode order), resized to ``size`` (w, h) by swscale."""
    import av

    wanted = sorted(set(indices))
    last = wanted[-1]
    got: dict[int, np.ndarray] = {}
    kw: dict[str, Any] = {"format": "rgb24"}
    if size is not None:
        kw.update(width=size[0], height=size[1], interpolation="AREA")
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        # One decode thread: loaders parallelize across DataLoader workers, and FFmpeg's frame
        # threads only add start-up latency on short clips.
        stream.thread_count = 1
        want = set(wanted)
        for i, frame in enumerate(container.decode(stream)):
            if i in want:
                got[i] = frame.to_ndarray(**kw)
            if i >= last:
                break
    if not got:
        raise AiprodError(f"{path}: no frames decoded (is the file corrupt?)", code="bad_clip")
    n = max(got)
    return np.stack([got[min(i, n)] if min(i, n) in got else got[n] for i in indices])


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    data = {k: v.contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(data, str(tmp)))


def to_float(frames: np.ndarray) -> torch.Tensor:
    """(F, H, W, 3) uint8 -> (3, F, H, W) float32 in [-1, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)
    return t.float().div_(127.5).sub_(1.0)


class CurriculumVideoDataset(Dataset):
    """Clips of a manifest (accepted ones, optionally only some phases) as training samples.

    Each item is a dict: ``video`` (3, F, H, W) float in [-1, 1] (or (F, H, W, 3) uint8 with
    ``output="uint8"``; absent when latents come from the cache), ``caption``, ``clip_id``,
    ``phase``, ``bucket`` (index), ``frame_indices``, and with encoders ``latents`` /
    ``text_embedding``.
    """

    def __init__(
        self,
        manifest: str | Path | Sequence[ClipRecord],
        *,
        phases: Sequence[int] | None = None,
        num_frames: int = 16,
        sampling: Sampling = "uniform",
        stride: int = 1,
        buckets: Sequence[tuple[int, int, int] | Bucket] | None = None,
        output: Literal["float", "uint8"] = "float",
        cache_dir: str | Path | None = None,
        vae_encoder: Encoder | None = None,
        text_encoder: Encoder | None = None,
        seed: int = 0,
    ) -> None:
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling={sampling!r}: choose one of {list(SAMPLINGS)}")
        if num_frames < 1 or stride < 1:
            raise ValueError("num_frames and stride must be >= 1")
        if (vae_encoder or text_encoder) and cache_dir is None:
            raise ValueError("encoders need cache_dir (where latents/embeddings are stored)")
        rows = read_manifest(manifest) if isinstance(manifest, str | Path) else list(manifest)
        rows = [r for r in rows if r.status == ACCEPTED]
        if phases is not None:
            rows = [r for r in rows if r.phase in set(phases)]
        if not rows:
            raise AiprodError(
                f"no accepted clips{f' in phases {list(phases)}' if phases else ''} in the "
                "manifest: run `aiprod data validate` / `organize` first",
                code="empty_dataset",
            )
        self.records = rows
        self.num_frames = num_frames
        self.sampling = sampling
        self.stride = stride
        self.output = output
        self.seed = seed
        self.epoch = 0
        self.buckets = [b if isinstance(b, Bucket) else Bucket(*b) for b in (buckets or [])]
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.vae_encoder = vae_encoder
        self.text_encoder = text_encoder
        self.bucket_ids = [self._bucket_for(r) for r in rows]

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Change the random windows (``random_window``) for a new epoch, reproducibly."""
        self.epoch = epoch

    def _bucket_for(self, rec: ClipRecord) -> int:
        if not self.buckets:
            return 0
        if not rec.width or not rec.height:
            return 0
        aspect = rec.width / rec.height
        return min(
            range(len(self.buckets)),
            key=lambda i: (abs(np.log(self.buckets[i].aspect / aspect)), -self.buckets[i].width),
        )

    def _indices(self, i: int, rec: ClipRecord, frames: int) -> list[int]:
        total = rec.num_frames or frames
        rng = np.random.default_rng([self.seed, self.epoch, i])
        return sample_indices(total, frames, sampling=self.sampling, stride=self.stride, rng=rng)

    # ---- cache ---------------------------------------------------------------------------

    def _content_id(self, rec: ClipRecord) -> str:
        st = Path(rec.path).stat()
        return f"{rec.sha256}:{st.st_size}:{st.st_mtime_ns}"

    def latent_key(self, rec: ClipRecord, indices: Sequence[int], bucket: Bucket | None) -> str:
        assert self.vae_encoder is not None
        blob = {
            "clip": self._content_id(rec),
            "indices": list(indices),
            "bucket": None if bucket is None else [bucket.width, bucket.height],
            "encoder": [self.vae_encoder.name, self.vae_encoder.version],
        }
        return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()

    def text_key(self, caption: str) -> str:
        assert self.text_encoder is not None
        blob = {"caption": caption, "encoder": [self.text_encoder.name, self.text_encoder.version]}
        return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()

    def _cache_path(self, kind: str, key: str) -> Path:
        assert self.cache_dir is not None
        return self.cache_dir / kind / key[:2] / f"{key}.safetensors"

    @staticmethod
    def _load(path: Path) -> torch.Tensor | None:
        if not path.exists():
            return None
        from safetensors.torch import load_file

        return load_file(path)["value"]

    # ---- items ---------------------------------------------------------------------------

    def __getitem__(self, i: int) -> dict[str, Any]:
        rec = self.records[i]
        b_id = self.bucket_ids[i]
        bucket = self.buckets[b_id] if self.buckets else None
        frames_wanted = bucket.num_frames if bucket is not None else self.num_frames
        indices = self._indices(i, rec, frames_wanted)
        item: dict[str, Any] = {
            "caption": rec.caption,
            "clip_id": rec.clip_id,
            "phase": rec.phase if rec.phase is not None else 0,
            "bucket": b_id,
            "frame_indices": torch.tensor(indices),
        }
        latents = None
        lat_path = None
        if self.vae_encoder is not None:
            lat_path = self._cache_path("latents", self.latent_key(rec, indices, bucket))
            latents = self._load(lat_path)
        if latents is None:
            arr = self._frames(rec, indices, bucket)  # (F, H, W, 3) uint8
            if self.vae_encoder is not None and lat_path is not None:
                with torch.no_grad():
                    latents = self.vae_encoder(to_float(arr).unsqueeze(0))[0]
                _atomic_save({"value": latents}, lat_path)
            item["video"] = to_float(arr) if self.output == "float" else torch.from_numpy(arr)
        if latents is not None:
            item["latents"] = latents
        if self.text_encoder is not None:
            txt_path = self._cache_path("text", self.text_key(rec.caption))
            emb = self._load(txt_path)
            if emb is None:
                with torch.no_grad():
                    emb = self.text_encoder(rec.caption)
                _atomic_save({"value": emb}, txt_path)
            item["text_embedding"] = emb
        return item

    def _frames(self, rec: ClipRecord, indices: Sequence[int], bucket: Bucket | None) -> np.ndarray:
        """The sampled frames, fitted to the bucket: (F, H, W, 3) uint8."""
        if bucket is None:
            return decode_frames(rec.path, indices)
        w, h = rec.width, rec.height
        if not w or not h:
            from aiprod.core.media import probe

            info = probe(rec.path)
            w, h = info.width, info.height
        sw, sh = _fit_size(w, h, bucket)
        arr = decode_frames(rec.path, indices, size=(sw, sh))
        y0, x0 = (sh - bucket.height) // 2, (sw - bucket.width) // 2
        return np.ascontiguousarray(arr[:, y0 : y0 + bucket.height, x0 : x0 + bucket.width])

    def fill_cache(self) -> int:
        """Compute every missing latent/embedding now; returns how many items were visited."""
        for i in range(len(self)):
            self[i]
        return len(self)


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of indices that share a bucket (so frames stack), shuffled per epoch."""

    def __init__(
        self,
        dataset: CurriculumVideoDataset,
        *,
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.bucket_ids = list(dataset.bucket_ids)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        groups: dict[int, list[int]] = {}
        for i, b in enumerate(self.bucket_ids):
            groups.setdefault(b, []).append(i)
        batches: list[list[int]] = []
        for idx in groups.values():
            if self.shuffle:
                idx = [idx[j] for j in rng.permutation(len(idx))]
            for s in range(0, len(idx), self.batch_size):
                chunk = idx[s : s + self.batch_size]
                if len(chunk) == self.batch_size or not self.drop_last:
                    batches.append(chunk)
        if self.shuffle:
            batches = [batches[j] for j in rng.permutation(len(batches))]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())
