"""Quality control of a rendered video, cheap enough to run on every video of a night.

- `flicker_mad`: mean absolute difference of consecutive frames (0-255), and `temporal_flickering`, VBench's score
  built on it: `(255 - MAD) / 255` averaged over consecutive pairs (1.0 = frozen, lower = more change).
- `ssim`: mean structural similarity of consecutive frames (grayscale, 11×11 Gaussian window, σ = 1.5).
- `motion_px`: the global translation actually present, in pixels per frame (phase correlation), for a
  Text2Video-Zero video to compare with the motion it asked for.

A video is `frozen` when consecutive frames hardly differ, `flickering` when their structure does not carry over;
the thresholds are options (`QcThresholds`) and the verdict goes to the sidecar and to `results.csv`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class QcThresholds:
    frozen_mad: float = 0.5  # below this mean absolute difference (of 255), nothing moves
    flicker_ssim: float = 0.3  # below this consecutive-frame SSIM, frames do not follow each other


def measure(frames: np.ndarray, thresholds: QcThresholds | None = None) -> dict[str, Any]:
    """QC values of uint8 frames `(F, H, W, 3)` and the verdict under `thresholds` (see `verdict`)."""
    thresholds = thresholds or QcThresholds()
    if len(frames) < 2:
        return {"verdict": "single frame", "thresholds": asdict(thresholds)}
    pixels = frames.astype(np.float32)
    mad = np.abs(np.diff(pixels, axis=0)).mean(axis=(1, 2, 3))
    gray = torch.from_numpy(pixels @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[:, None]
    ssim = _ssim(gray[:-1], gray[1:])
    motion = [_translation(gray[k, 0].numpy(), gray[k + 1, 0].numpy()) for k in range(len(frames) - 1)]
    values = {
        "flicker_mad": round(float(mad.mean()), 4),
        "temporal_flickering": round(float(((255.0 - mad) / 255.0).mean()), 4),
        "ssim": round(float(ssim.mean()), 4),
        "motion_px": round(float(np.mean(motion)), 3),
    }
    return {**values, "verdict": verdict(values, thresholds), "thresholds": asdict(thresholds)}


def row_verdict(measured: list[dict[str, Any]], thresholds: QcThresholds) -> str:
    """The verdict of a row's videos: `ok`, or every other verdict among them (`frozen`, `flickering,frozen`)."""
    flagged = sorted({verdict(values, thresholds) for values in measured} - {"ok"})
    return ",".join(flagged) or "ok"


def verdict(values: dict[str, Any], thresholds: QcThresholds) -> str:
    """`frozen`, `flickering` or `ok` for measured values (a night may judge with other thresholds than the render)."""
    if "flicker_mad" not in values:
        return "single frame"
    if values["flicker_mad"] < thresholds.frozen_mad:
        return "frozen"
    if values["ssim"] < thresholds.flicker_ssim:
        return "flickering"
    return "ok"


def _ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pair SSIM of grayscale images `(N, 1, H, W)` in 0-255 (Wang et al. 2004 constants)."""
    size = min(11, a.shape[-1], a.shape[-2])
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    gauss = torch.exp(-(coords**2) / (2 * 1.5**2))
    window = (gauss[:, None] * gauss[None, :] / gauss.sum() ** 2)[None, None]

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, window)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    ssim = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return ssim.mean(dim=(1, 2, 3))


def _translation(a: np.ndarray, b: np.ndarray) -> float:
    """Length of the global shift from `a` to `b`, in pixels, by phase correlation."""
    spectrum = np.fft.fft2(a - a.mean()) * np.conj(np.fft.fft2(b - b.mean()))
    correlation = np.abs(np.fft.ifft2(spectrum / (np.abs(spectrum) + 1e-6)))
    dy, dx = np.unravel_index(np.argmax(correlation), correlation.shape)
    height, width = a.shape
    dy, dx = (dy - height if dy > height // 2 else dy), (dx - width if dx > width // 2 else dx)
    return float(np.hypot(dy, dx))
