"""The full-size preset runs end to end. Slow (builds a billion random parameters): `pytest -m slow`."""

import pytest
from conftest import assert_is_moving_video

pytestmark = pytest.mark.slow


def test_sd15_random_generates_a_video():
    from t2v_fast import load_pipeline

    pipeline = load_pipeline("sd15-random", device="cpu", dtype="float32")
    assert pipeline.backend.card.native_size == 512
    video = pipeline.generate_video("a cat", frames=3, height=128, width=128, steps=3, seed=0, progress=False)
    assert video.frames.shape == (3, 128, 128, 3)
    assert_is_moving_video(video.frames)
