"""Our pipeline against diffusers' TextToVideoZeroPipeline on the same saved folder: fp32, CPU, DDIM.

Tolerance: 2/255 per pixel; the observed difference is 0-1/255.
"""

import pytest
from conftest import assert_is_moving_video, max_pixel_diff, reference_arguments, reference_frames

TOLERANCE = 2

CASES = {
    "8 frames 64x64": dict(frames=8, height=64, width=64, steps=10, t0=6, t1=8, guidance=7.5, seed=0),
    "5 frames 96x128": dict(frames=5, height=96, width=128, steps=12, t0=5, t1=9, guidance=5.0, seed=7),
    "3 frames 64x64, motion": dict(
        frames=3, height=64, width=64, steps=6, t0=1, t1=4, guidance=9.0, seed=3, motion_x=-20.0, motion_y=5.0
    ),
    # Multiples of 8 but not of 16: odd latent sides, where the UNet's upsamplers take the skip connections' sizes.
    "4 frames 72x72": dict(frames=4, height=72, width=72, steps=8, t0=4, t1=6, guidance=7.5, seed=5),
    "4 frames 56x88, non-square": dict(frames=4, height=56, width=88, steps=8, t0=4, t1=6, guidance=7.5, seed=6),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_frames_match_reference(pipeline, reference, case):
    prompt, negative = "a panda playing guitar on times square", "blurry, low quality"
    ours = pipeline.generate_video(prompt, negative_prompt=negative, progress=False, **case)
    ref = reference_frames(
        reference, case["seed"], prompt=prompt, negative_prompt=negative, **reference_arguments(case)
    )
    assert ours.frames.shape == (case["frames"], case["height"], case["width"], 3)
    assert_is_moving_video(ours.frames)
    assert max_pixel_diff(ours.frames, ref) <= TOLERANCE


def test_default_t0_t1_match_reference_defaults(pipeline, reference):
    """With 50 steps and no t0/t1 we must pick the reference's 44/47 and produce its frames."""
    ours = pipeline.generate_video("a cat", seed=11, frames=3, progress=False)
    assert (ours.metadata["params"]["t0"], ours.metadata["params"]["t1"]) == (44, 47)
    ref = reference_frames(reference, 11, prompt="a cat", video_length=3)
    assert max_pixel_diff(ours.frames, ref) <= TOLERANCE


def test_different_seed_gives_different_video(pipeline):
    a = pipeline.generate_video("a cat", seed=1, frames=2, steps=4, progress=False)
    b = pipeline.generate_video("a cat", seed=2, frames=2, steps=4, progress=False)
    assert max_pixel_diff(a.frames, b.frames) > 20
