"""The t0/t1 rule and the latent warp against the reference's 512-grid flow field."""

import pytest
import torch
from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_zero import (
    create_motion_field_and_warp_latents,
)

from t2v_fast.core.presets import build_random_components
from t2v_fast.errors import UserError
from t2v_fast.families.text2video_zero.motion import warp_latents
from t2v_fast.families.text2video_zero.schedule import resolve_t0_t1, timesteps_for


@pytest.fixture(scope="module")
def scheduler():
    return build_random_components("tiny-random")["scheduler"]


def test_defaults_are_the_references(scheduler):
    assert resolve_t0_t1(scheduler, 50, None, None) == (44, 47)
    timesteps = timesteps_for(scheduler, 50)
    assert (int(timesteps[50 - 1 - 44]), int(timesteps[50 - 1 - 47])) == (881, 941)


@pytest.mark.parametrize("steps", [2, 3, 4, 7, 10, 20, 25, 30, 49, 51, 75, 100, 250])
def test_derived_t0_t1_are_valid_and_nearest(scheduler, steps):
    t0, t1 = resolve_t0_t1(scheduler, steps, None, None)
    assert 0 <= t0 < t1 < steps
    timesteps = [int(t) for t in timesteps_for(scheduler, steps)]

    def at(t):
        return timesteps[steps - 1 - t]

    assert all(abs(at(t1) - 941) <= abs(at(t) - 941) for t in range(1, steps))
    assert all(abs(at(t0) - 881) <= abs(at(t) - 881) for t in range(0, t1))


def test_one_given_value_derives_the_other(scheduler):
    assert resolve_t0_t1(scheduler, 10, 3, None) == (3, 9)
    assert resolve_t0_t1(scheduler, 10, None, 3) == (2, 3)


@pytest.mark.parametrize(
    ("steps", "t0", "t1", "message"),
    [
        (10, 9, 5, "0 <= t0 < t1 < steps"),
        (10, 4, 4, "0 <= t0 < t1 < steps"),
        (10, 0, 10, r"t1 must be in \[0, steps-1\]"),
        (10, -1, 5, r"t0 must be in \[0, steps-1\]"),
        (10, 9, None, "leaves no room for t1"),
        (10, None, 0, "t1 must be at least 1"),
        (1, None, None, "steps must be at least 2"),
    ],
)
def test_invalid_t0_t1_are_refused(scheduler, steps, t0, t1, message):
    with pytest.raises(UserError, match=message):
        resolve_t0_t1(scheduler, steps, t0, t1)


@pytest.mark.parametrize(
    ("height", "width", "motion_x", "motion_y"),
    [(8, 8, 12, 12), (64, 64, 12, 12), (12, 16, 7.3, -3), (40, 24, 20, 5), (96, 64, 12.7, 8.2)],
)
def test_warp_matches_reference_flow_field(height, width, motion_x, motion_y):
    torch.manual_seed(0)
    latent = torch.randn(1, 4, height, width)
    frame_ids = list(range(1, 12))
    expected = create_motion_field_and_warp_latents(
        motion_x, motion_y, frame_ids, latent.repeat(len(frame_ids), 1, 1, 1)
    )
    actual = warp_latents(latent, frame_ids, motion_x, motion_y)[0]
    torch.testing.assert_close(actual, expected, atol=0, rtol=0)
    assert (actual[-1] - latent[0]).abs().max() > 0.1, "the last frame must have moved"
