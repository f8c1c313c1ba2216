"""CurriculumVideoDataset on real MP4s: sampling, buckets, batches and the encoder cache."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from aiprod.builtin import synth
from aiprod.core.errors import AiprodError
from aiprod.core.media import read_video
from aiprod.data.dataset import BucketBatchSampler, CurriculumVideoDataset, sample_indices
from aiprod.data.manifest import read_manifest


@pytest.fixture(scope="module")
def manifests(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("dsets")
    wide = synth.write_synth_dataset(
        root / "wide", n_per_phase=1, width=48, height=32, num_frames=12, fps=24, seed=1
    )
    tall = synth.write_synth_dataset(
        root / "tall", n_per_phase=1, width=32, height=48, num_frames=12, fps=24, seed=2,
        phases=(1, 2),
    )  # fmt: skip
    return wide, tall


class PoolVAE(torch.nn.Module):
    """A real (tiny) encoder: 2x spatial average pooling, counting its calls."""

    name = "pool-vae"

    def __init__(self, version: str = "1") -> None:
        super().__init__()
        self.version = version
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, F, H, W)
        self.calls += 1
        return torch.nn.functional.avg_pool3d(x, (1, 2, 2))


class ByteText(torch.nn.Module):
    name = "byte-text"
    version = "1"

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(256, 8)
        self.calls = 0

    def forward(self, text: str) -> torch.Tensor:
        self.calls += 1
        return self.emb(torch.tensor(list(text.encode()))).mean(0)


def test_sampling_strategies() -> None:
    assert sample_indices(12, 4, sampling="uniform") == [0, 4, 7, 11]
    assert sample_indices(12, 4, sampling="stride", stride=3) == [0, 3, 6, 9]
    assert sample_indices(5, 4, sampling="stride", stride=2) == [0, 2, 4, 4]  # short: repeat
    w = sample_indices(12, 4, sampling="random_window", stride=2, rng=np.random.default_rng(0))
    assert np.all(np.diff(w) == 2) and 0 <= w[0] <= 12 - 7
    with pytest.raises(ValueError, match="choose one of"):
        sample_indices(12, 4, sampling="bogus")


def test_items_are_the_decoded_frames(manifests) -> None:
    wide, _ = manifests
    ds = CurriculumVideoDataset(wide, num_frames=4, sampling="uniform")
    assert len(ds) == 5
    item = ds[0]
    video = item["video"]
    assert video.shape == (3, 4, 32, 48) and video.dtype == torch.float32
    assert -1.0 <= video.min() and video.max() <= 1.0
    frames, _ = read_video(ds.records[0].path)
    expect = frames[[0, 4, 7, 11]]
    got = ((video.permute(1, 2, 3, 0) + 1) * 127.5).round().to(torch.uint8).numpy()
    assert np.abs(got.astype(int) - expect.astype(int)).max() <= 1
    assert item["caption"] == ds.records[0].caption and item["phase"] == 1
    u8 = CurriculumVideoDataset(wide, num_frames=4, output="uint8")[0]["video"]
    assert u8.dtype == torch.uint8 and u8.shape == (4, 32, 48, 3)
    assert np.array_equal(u8.numpy(), expect)


def test_random_window_is_reproducible_per_epoch(manifests) -> None:
    wide, _ = manifests
    ds = CurriculumVideoDataset(wide, num_frames=3, sampling="random_window", seed=3)
    seen = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        a = ds[1]["frame_indices"].tolist()
        assert a == ds[1]["frame_indices"].tolist()
        seen.add(tuple(a))
    assert len(seen) > 1


def test_buckets_and_batches(manifests) -> None:
    wide, tall = manifests
    rows = read_manifest(wide) + read_manifest(tall)
    ds = CurriculumVideoDataset(
        rows, buckets=[(32, 32, 4), (24, 16, 4), (16, 24, 2)], sampling="stride", stride=2
    )
    assert ds.bucket_ids == [1] * 5 + [2] * 2
    assert ds[0]["video"].shape == (3, 4, 16, 24)
    assert ds[6]["video"].shape == (3, 2, 24, 16)
    sampler = BucketBatchSampler(ds, batch_size=2, seed=0)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(7))
    for b in batches:
        assert len({ds.bucket_ids[i] for i in b}) == 1
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler)
    for batch in loader:
        assert batch["video"].ndim == 5
    only2 = CurriculumVideoDataset(rows, phases=[2])
    assert {r.phase for r in only2.records} == {2} and len(only2) == 2
    with pytest.raises(AiprodError, match="no accepted clips"):
        CurriculumVideoDataset(rows[5:], phases=[5])


def test_cache_is_keyed_by_content_and_encoder_version(manifests, tmp_path) -> None:
    wide, _ = manifests
    vae, text = PoolVAE(), ByteText()
    kw = dict(num_frames=4, cache_dir=tmp_path / "cache", text_encoder=text)
    ds = CurriculumVideoDataset(wide, vae_encoder=vae, **kw)
    first = [ds[i] for i in range(len(ds))]
    assert vae.calls == 5 and text.calls == 5
    assert first[0]["latents"].shape == (3, 4, 16, 24)
    assert torch.allclose(
        first[0]["latents"], torch.nn.functional.avg_pool3d(first[0]["video"][None], (1, 2, 2))[0]
    )
    again = ds[0]
    assert vae.calls == 5 and text.calls == 5  # served from the cache, no decode
    assert "video" not in again
    assert torch.equal(again["latents"], first[0]["latents"])
    assert torch.equal(again["text_embedding"], first[0]["text_embedding"])
    # another encoder version never reads the old entries
    vae2 = PoolVAE(version="2")
    CurriculumVideoDataset(wide, vae_encoder=vae2, **kw)[0]
    assert vae2.calls == 1
    # a changed file behind the same manifest row is a miss, not a stale hit
    path = ds.records[0].path
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    ds[0]
    assert vae.calls == 6
    # other frames are another entry
    CurriculumVideoDataset(wide, vae_encoder=vae, sampling="stride", stride=2, **kw)[1]
    assert vae.calls == 7
    with pytest.raises(ValueError, match="cache_dir"):
        CurriculumVideoDataset(wide, vae_encoder=vae)
