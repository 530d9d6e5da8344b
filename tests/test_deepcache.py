"""Fast mode (DeepCache) on the torch backend, held to DeepCache itself.

Oracle: DeepCache 0.1.1's `DeepCacheSDHelper` on diffusers' `TextToVideoZeroPipeline`, same interval and branch.
As published, the helper fails at Text2Video-Zero's phase change (it reuses features cached while only the first
frame was denoised, batch 2, once all frames run, batch 2×frames: "Sizes of tensors must match"). DeepCache's own
Text2Video-Zero pipeline (`DeepCache.sd.pipeline_text_to_video_zero`) does not import with diffusers 0.42.1
(`PositionNet` is gone from `diffusers.models.embeddings`). So the oracle is the helper with its cache reset at each
of the reference's denoising loops (`backward_loop`), which is what DeepCache's own Text2Video-Zero pipeline does too
(its loops restart the interval count and drop the cached feature). Tolerance: 2/255 per pixel, as for every
fidelity test. Beside it, the split itself: the shallow branch from a full step's feature equals the full UNet
(1e-5), for every branch of both families' UNets.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import assert_is_moving_video, max_pixel_diff, reference_arguments, reference_frames

from t2v_fast.backends.torch import TorchBackend
from t2v_fast.core.deepcache import CachedUNet, CachingUNet
from t2v_fast.core.models import load_components
from t2v_fast.core.networks import VIDEO_UNETS
from t2v_fast.core.params import ParamRequest
from t2v_fast.errors import UserError
from t2v_fast.families.text2video_zero.pipeline import TextToVideoZeroPipeline

TOLERANCE = 2
SPLIT_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def deepcache_reference(tiny_folder):
    """A reference pipeline of its own (the helper rewires its UNet), with DeepCache's helper reset per loop."""
    from DeepCache import DeepCacheSDHelper
    from diffusers import TextToVideoZeroPipeline as ReferencePipeline

    ref = ReferencePipeline.from_pretrained(str(tiny_folder))
    ref.set_progress_bar_config(disable=True)
    helper = DeepCacheSDHelper(pipe=ref)
    original = ref.backward_loop

    def backward_loop(*args, **kwargs):
        helper.cached_output, helper.start_timestep = {}, None  # a new loop: nothing cached at its batch shape
        return original(*args, **kwargs)

    ref.backward_loop = backward_loop

    def run(interval: int, branch: int, **kwargs) -> np.ndarray:
        helper.set_params(cache_interval=interval, cache_branch_id=branch)
        helper.enable()
        try:
            return reference_frames(ref, **kwargs)
        finally:
            helper.disable()

    return run


CASES = {
    "interval 3, branch 0, 6 frames 64x64": dict(
        cache_interval=3, cache_branch=0, frames=6, height=64, width=64, steps=12, t0=7, t1=9, seed=0
    ),
    "interval 2, branch 1, 4 frames 72x88": dict(
        cache_interval=2, cache_branch=1, frames=4, height=72, width=88, steps=10, t0=5, t1=8, seed=4
    ),
    "interval 5, branch 3, 3 frames 64x64": dict(
        cache_interval=5, cache_branch=3, frames=3, height=64, width=64, steps=15, t0=9, t1=12, seed=2
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_fast_mode_matches_deepcache_helper(pipeline, deepcache_reference, case):
    prompt, negative = "a panda playing guitar on times square", "blurry"
    ours = pipeline.generate_video(prompt, negative_prompt=negative, progress=False, **case)
    fast = {k: v for k, v in case.items() if not k.startswith("cache_")}
    ref = deepcache_reference(
        case["cache_interval"],
        case["cache_branch"],
        seed=case["seed"],
        prompt=prompt,
        negative_prompt=negative,
        **reference_arguments(fast),
    )
    exact = pipeline.generate_video(prompt, negative_prompt=negative, progress=False, **fast)
    assert_is_moving_video(ours.frames)
    assert max_pixel_diff(ours.frames, ref) <= TOLERANCE
    # Not a comparison that passes trivially: fast mode does change the video.
    assert max_pixel_diff(ours.frames, exact.frames) > TOLERANCE
    assert ours.metadata["params"]["cache_interval"] == case["cache_interval"]


def test_interval_one_is_the_exact_path(pipeline, reference):
    """The default, and interval 1 said explicitly, run the exact path: the reference without DeepCache."""
    case = dict(frames=3, height=64, width=64, steps=8, t0=4, t1=6, seed=9)
    default = pipeline.generate_video("a cat", progress=False, **case)
    explicit = pipeline.generate_video("a cat", progress=False, cache_interval=1, cache_branch=4, **case)
    assert np.array_equal(default.frames, explicit.frames)
    ref = reference_frames(
        reference, 9, prompt="a cat", **reference_arguments({k: case[k] for k in case if k != "seed"})
    )
    assert max_pixel_diff(default.frames, ref) <= TOLERANCE


@pytest.mark.parametrize("preset", ["tiny-random", "modelscope-tiny-random"])
def test_shallow_branch_from_a_full_steps_feature_equals_the_full_unet(preset):
    """Every branch of both families' UNets, at odd latent sides (upsamplers take the skip connections' sizes)."""
    components = load_components(preset, device="cpu", dtype="float32")
    video_unet = VIDEO_UNETS[components.card.family](components.unet).eval()
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 3, 4, 9, 11, generator=generator)
    text = torch.randn(2, 77, components.card.text_dim, generator=generator)
    timestep = torch.tensor(801)
    with torch.no_grad():
        exact = video_unet(sample, timestep, text)
        for branch in range(components.card.cache_branches):
            noise, feature = CachingUNet(video_unet, branch)(sample, timestep, text)
            shallow = CachedUNet(video_unet, branch)(sample, timestep, text, feature)
            assert (noise - exact).abs().max() <= SPLIT_TOLERANCE, branch
            assert (shallow - exact).abs().max() <= SPLIT_TOLERANCE, branch
            assert feature.shape[:2] == (2, 3)
    assert components.card.cache_branches == 3 * len(components.unet.up_blocks)


class CountingBackend(TorchBackend):
    """The torch backend, recording which kind of UNet call each step made, and at which frame count."""

    def __init__(self, components):
        super().__init__(components)
        self.calls: list[tuple[str, int]] = []

    def predict_noise_caching(self, sample, timestep, encoder_hidden_states, branch):
        self.calls.append(("full", sample.shape[1]))
        return super().predict_noise_caching(sample, timestep, encoder_hidden_states, branch)

    def predict_noise_cached(self, sample, timestep, encoder_hidden_states, feature, branch):
        self.calls.append(("shallow", sample.shape[1]))
        return super().predict_noise_cached(sample, timestep, encoder_hidden_states, feature, branch)


def test_every_loop_and_chunk_starts_with_a_full_step():
    """Text2Video-Zero's three loops (first frame to t1, t1 to t0, all frames from t1), the last once per chunk:
    each starts with a full step at its own shape, then one full step every `interval`."""
    components = load_components("tiny-random", device="cpu", dtype="float32")
    backend = CountingBackend(components)
    pipeline = TextToVideoZeroPipeline(components.tokenizer, components.scheduler, backend)
    steps, t0, t1, interval, chunk = 12, 6, 9, 3, 3
    pipeline.generate_video(
        "a cat", seed=1, frames=5, steps=steps, t0=t0, t1=t1, chunk_size=chunk, cache_interval=interval, progress=False
    )
    loops = [steps - t1 - 1, t1 - t0] + [t1 + 1] * math.ceil(
        5 / (chunk - 1)
    )  # each chunk: the anchor and two own frames
    frames = [1, 1] + [chunk] * (len(loops) - 2)
    expected = [
        ("full" if step % interval == 0 else "shallow", count)
        for length, count in zip(loops, frames, strict=True)
        for step in range(length)
    ]
    assert backend.calls == expected


def test_fast_mode_on_modelscope_runs_the_shallow_branch_between_full_steps():
    """ModelScope's UNet3D splits the same way (temporal layers inside the branch); one loop, no phases."""
    from t2v_fast.families.modelscope.pipeline import ModelScopePipeline

    components = load_components("modelscope-tiny-random", device="cpu", dtype="float32")
    backend = CountingBackend(components)
    pipeline = ModelScopePipeline(components.tokenizer, components.scheduler, backend)
    case = dict(frames=4, height=64, width=64, steps=8, seed=3)
    exact = pipeline.generate_video("a cat", progress=False, **case)
    fast = pipeline.generate_video("a cat", progress=False, cache_interval=3, **case)
    assert backend.calls == [("full" if step % 3 == 0 else "shallow", 4) for step in range(8)]
    assert fast.frames.shape == exact.frames.shape
    assert max_pixel_diff(fast.frames, exact.frames) > TOLERANCE
    assert fast.metadata["params"]["cache_interval"] == 3


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (dict(cache_interval=0), "cache_interval must be >= 1, got 0"),
        (dict(cache_interval=2.5), "cache_interval must be an integer, got 2.5"),
        (dict(cache_branch=6), "cache_branch must be in [0, 5] for this UNet, got 6"),
        (dict(cache_branch=-1), "cache_branch must be >= 0, got -1"),
    ],
)
def test_bad_fast_mode_parameters_are_refused_before_any_work(pipeline, params, message):
    with pytest.raises(UserError) as raised:
        pipeline.generate_video("a cat", frames=2, steps=4, progress=False, **params)
    assert str(raised.value) == message


def test_cli_refuses_an_out_of_range_branch_in_one_line(cli, tmp_path):
    result = cli("generate", "a cat", "--model", "tiny-random", "--cache-branch", "9", "--out", str(tmp_path / "a.mp4"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "t2v-fast: error: cache_branch must be in [0, 5] for this UNet, got 9"
    ]
    assert not (tmp_path / "a.mp4").exists()


def test_a_fast_video_is_a_request_of_its_own_and_old_exact_hashes_stay(pipeline):
    """The skip logic: a fast row never counts as done by an exact video (or another interval), and an exact
    request hashes as before fast mode existed (its parameters at their defaults are left out)."""
    from t2v_fast.bulk.rendering import request_sha256

    params = pipeline.card.resolve(ParamRequest.of(frames=2)).as_dict()
    before_fast_mode = {k: v for k, v in params.items() if not k.startswith("cache_")}
    family = pipeline.card.family
    assert request_sha256("a", "", 1, params, family) == request_sha256("a", "", 1, before_fast_mode, family)
    hashes = {
        request_sha256("a", "", 1, {**params, "cache_interval": interval, "cache_branch": branch}, family)
        for interval, branch in ((1, 0), (2, 0), (3, 0), (3, 1))
    }
    assert len(hashes) == 4


def test_a_manifest_mixes_exact_and_fast_rows_and_a_rerun_tells_them_apart(cli, tmp_path):
    """`cache_interval` and `cache_branch` are manifest columns; a bad value is refused with its row and column; the
    sidecar records fast mode; a re-run skips what is done, and a fast row whose exact twin exists still renders."""
    import json

    manifest = tmp_path / "night.csv"
    manifest.write_text("id,prompt,cache_interval,cache_branch\nexact,a cat,,\nfast,a cat,3,1\nbad,a dog,0,\n")
    out = tmp_path / "out"
    options = ("--model", "tiny-random", "--out", str(out), "--frames", "2", "--steps", "6", "--seed", "1")
    first = cli("batch", str(manifest), *options)
    assert first.returncode == 0, first.stderr
    assert "row 4, column cache_interval: cache_interval must be >= 1, got 0" in first.stdout
    sidecars = {name: json.loads((out / f"{name}.json").read_text()) for name in ("exact", "fast")}
    assert sidecars["exact"]["params"]["cache_interval"] == 1
    assert (sidecars["fast"]["params"]["cache_interval"], sidecars["fast"]["params"]["cache_branch"]) == (3, 1)
    assert sidecars["exact"]["request"]["sha256"] != sidecars["fast"]["request"]["sha256"]

    manifest.write_text(
        "id,prompt,cache_interval\nexact,a cat,\nfast,a cat,2\n"
    )  # the fast row asks for another interval
    second = cli("batch", str(manifest), *options)
    assert second.returncode == 0, second.stderr
    assert "2 rows: 1 to render, 1 already done, 0 rejected" in second.stdout
    assert json.loads((out / "fast.json").read_text())["params"]["cache_interval"] == 2
