"""Frechet video distance over a pluggable feature extractor.

``FVD = |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` between Gaussians fitted to the
features of two video sets. The standard FVD uses an I3D network: give its TorchScript file
(e.g. the StyleGAN-V ``i3d_torchscript.pt``) to :class:`I3DFeatures`; nothing is downloaded.
Without it, :class:`PixelStatsFeatures` gives a weights-free distance that is *not*
comparable with published FVD numbers (reports name the extractor used).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from aiprod.core.errors import ConfigError


class FeatureExtractor(Protocol):
    name: str

    def __call__(self, videos: np.ndarray) -> np.ndarray:
        """(N, F, H, W, 3) uint8 -> (N, D) float64 features."""
        ...


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(
    mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray
) -> float:
    """Frechet distance between N(mu_a, cov_a) and N(mu_b, cov_b).

    ``Tr((S_a S_b)^(1/2))`` is computed as the trace of the PSD root of
    ``S_a^(1/2) S_b S_a^(1/2)`` (same eigenvalues, symmetric, so no complex round-off).
    """
    diff = np.asarray(mu_a, np.float64) - np.asarray(mu_b, np.float64)
    ra = _sqrt_psd(np.asarray(cov_a, np.float64))
    inner = ra @ np.asarray(cov_b, np.float64) @ ra
    w = np.linalg.eigvalsh((inner + inner.T) / 2)
    tr_sqrt = float(np.sqrt(np.clip(w, 0, None)).sum())
    d = float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * tr_sqrt)
    return max(d, 0.0)


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need (N >= 2, D) features, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def fvd_from_features(a: np.ndarray, b: np.ndarray) -> float:
    return frechet_distance(*gaussian_stats(a), *gaussian_stats(b))


def fvd(real: np.ndarray, fake: np.ndarray, extractor: FeatureExtractor) -> float:
    return fvd_from_features(extractor(real), extractor(fake))


class PixelStatsFeatures:
    """Weights-free video features: colour histograms, coarse layout, temporal differences."""

    name = "pixel-stats-v1"

    def __call__(self, videos: np.ndarray) -> np.ndarray:
        import cv2

        out = []
        for v in np.asarray(videos):
            x = v.astype(np.float32) / 255.0  # (F, H, W, 3)
            hist = [
                np.histogram(x[..., c], bins=8, range=(0, 1))[0] / x[..., c].size for c in range(3)
            ]
            coarse = np.stack([cv2.resize(f, (4, 4), interpolation=cv2.INTER_AREA) for f in x])
            diff = np.abs(np.diff(x, axis=0)).mean(axis=(1, 2, 3)) if len(x) > 1 else np.zeros(1)
            out.append(
                np.concatenate(
                    [
                        np.concatenate(hist),
                        coarse.mean(axis=0).ravel(),
                        coarse.std(axis=0).ravel(),
                        [diff.mean(), diff.std()],
                    ]
                )
            )
        return np.asarray(out, np.float64)


class I3DFeatures:
    """I3D features from a local TorchScript file (the standard FVD detector)."""

    name = "i3d"

    def __init__(self, path: Path | str, *, device: str = "cpu", batch_size: int = 8) -> None:
        import torch

        path = Path(path)
        if not path.is_file():
            raise ConfigError(
                f"I3D model {path} does not exist: give a local TorchScript I3D file "
                "(e.g. i3d_torchscript.pt) or leave --i3d out to use pixel statistics"
            )
        self.model = torch.jit.load(str(path), map_location=device).eval()
        self.device, self.batch_size = device, batch_size

    def __call__(self, videos: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        feats = []
        with torch.no_grad():
            for s in range(0, len(videos), self.batch_size):
                v = torch.from_numpy(np.asarray(videos[s : s + self.batch_size]))
                x = v.permute(0, 4, 1, 2, 3).float().div(127.5).sub(1)  # (B, 3, F, H, W)
                b, c, f, h, w = x.shape
                x = F.interpolate(
                    x.transpose(1, 2).reshape(b * f, c, h, w),
                    size=(224, 224),
                    mode="bilinear",
                    align_corners=False,
                )
                x = x.reshape(b, f, c, 224, 224).transpose(1, 2).to(self.device)
                try:
                    y = self.model(x, rescale=False, resize=False, return_features=True)
                except (TypeError, RuntimeError):
                    y = self.model(x)
                feats.append(y.reshape(b, -1).double().cpu().numpy())
        return np.concatenate(feats)
