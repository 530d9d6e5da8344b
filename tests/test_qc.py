"""QC values of videos whose answer is known: frozen, flickering, and a clean translation."""

import numpy as np
import pytest

from t2v_fast.bulk.qc import QcThresholds, measure


def _textured(height=64, width=64, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 8, width // 8, 3))
    return np.kron(small, np.ones((8, 8, 1))).astype(np.uint8)  # blocks: structure SSIM can see


def test_a_frozen_video_is_frozen():
    frames = np.stack([_textured()] * 6)
    qc = measure(frames)
    assert qc["flicker_mad"] == 0 and qc["temporal_flickering"] == 1.0
    assert qc["ssim"] == pytest.approx(1.0) and qc["motion_px"] == 0
    assert qc["verdict"] == "frozen"


def test_a_flickering_video_is_flickering():
    frames = np.stack([_textured(seed=k) for k in range(6)])  # every frame unrelated to the one before
    qc = measure(frames)
    assert qc["flicker_mad"] > 60 and qc["temporal_flickering"] < 0.75
    assert qc["ssim"] < 0.2
    assert qc["verdict"] == "flickering"


def test_a_steady_translation_is_ok_and_its_motion_is_measured():
    base = _textured(96, 96)
    frames = np.stack([np.roll(base, shift=(0, 3 * k), axis=(0, 1)) for k in range(5)])  # 3 px right per frame
    qc = measure(frames)
    assert qc["motion_px"] == pytest.approx(3.0)
    assert qc["verdict"] == "ok"


def test_thresholds_are_options():
    frames = np.stack([_textured()] * 3)
    assert measure(frames, QcThresholds(frozen_mad=-1.0))["verdict"] == "ok"
    assert measure(frames[:1])["verdict"] == "single frame"
