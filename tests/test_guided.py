"""Guided video (ControlNet over Text2Video-Zero) against its reference recipe: diffusers'
`StableDiffusionControlNetPipeline` with `CrossFrameAttnProcessor` on the UNet and the ControlNet, DDIM (eta 0), one
noise draw repeated over the frames and `[prompt] * frames`, as diffusers documents it and the original system runs
it; then its chunking, batching, sidecar and bad inputs."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from conftest import max_pixel_diff

from benchmarks.guided import moving_shape  # the benchmark's control video: one synthetic video for both
from t2v_fast.errors import UserError

# Same seed, same weights, fp32 CPU: what remains is the order of floating-point sums (batched matmuls).
TOLERANCE = 2  # /255 per pixel
PROMPT = "a robot dancing on the beach"


def canny_maps(frames: np.ndarray, low: int = 100, high: int = 200) -> np.ndarray:
    """diffusers' documented Canny preprocessing for its ControlNets, per frame."""
    return np.stack([np.repeat(cv2.Canny(f, low, high)[..., None], 3, axis=2) for f in frames])


@pytest.fixture(scope="session")
def guided(tiny_folder, controlnet_folder, depth_folder):
    from t2v_fast import load_pipeline

    return load_pipeline(
        str(tiny_folder),
        controlnet=str(controlnet_folder),
        depth_model=str(depth_folder),
        device="cpu",
        dtype="float32",
    )


def reference_pipeline(base_folder, controlnet_folder):
    """The recipe's pipeline: diffusers' ControlNet pipeline over saved folders, DDIM, cross-frame attention on the
    UNet and on the ControlNet (one video of two guidance branches per call)."""
    from diffusers import ControlNetModel, DDIMScheduler, StableDiffusionControlNetPipeline
    from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_zero import (
        CrossFrameAttnProcessor,
    )

    controlnet = ControlNetModel.from_pretrained(controlnet_folder)
    pipe = StableDiffusionControlNetPipeline.from_pretrained(
        base_folder, controlnet=controlnet, safety_checker=None, requires_safety_checker=False
    )
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.unet.set_attn_processor(CrossFrameAttnProcessor(batch_size=2))
    pipe.controlnet.set_attn_processor(CrossFrameAttnProcessor(batch_size=2))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def reference(tiny_folder, controlnet_folder):
    return reference_pipeline(tiny_folder, controlnet_folder)


def reference_video(pipe, maps: np.ndarray, seed: int, steps: int, scale: float = 1.0, guidance: float = 9.0):
    """The documented recipe: one `(1, 4, h, w)` draw from a CPU generator seeded with the seed, repeated."""
    from PIL import Image

    frames, height, width = maps.shape[:3]
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn((1, 4, height // 8, width // 8), generator=generator).repeat(frames, 1, 1, 1)
    images = pipe(
        prompt=[PROMPT] * frames,
        image=[Image.fromarray(m) for m in maps],
        latents=latents,
        height=height,
        width=width,
        num_inference_steps=steps,
        guidance_scale=guidance,
        controlnet_conditioning_scale=scale,
        eta=0.0,
        output_type="np",
    ).images
    return (images * 255).round().astype(np.uint8)


def reference_chunks(pipe, maps: np.ndarray, seed: int, steps: int, chunk_size: int) -> np.ndarray:
    """The original system's chunk procedure (its `model.py`, `inference`): chunks of `chunk_size - 1` frames, each
    prefixed by frame 0 (whose output is dropped), every chunk from the same repeated noise."""
    frames = len(maps)
    starts = list(range(0, frames, chunk_size - 1))
    parts = []
    for i, start in enumerate(starts):
        end = frames if i == len(starts) - 1 else starts[i + 1]
        ids = [0, *range(start, end)]
        parts.append(reference_video(pipe, maps[ids], seed, steps)[1:])
    return np.concatenate(parts)


CASES = [(3, 72, 88), (5, 56, 80)]  # frames, height, width: multiples of 8, not of 64


@pytest.mark.parametrize("annotator", ["canny", "depth", "none"])
@pytest.mark.parametrize(("frames", "height", "width"), CASES, ids=[f"{f}x{h}x{w}" for f, h, w in CASES])
def test_guided_video_equals_the_controlnet_recipe(guided, reference, annotator, frames, height, width):
    video_in = moving_shape(frames, height, width)
    steps, seed = 3, 11
    video = guided.generate_video(
        PROMPT,
        control=video_in,
        annotator=annotator,
        steps=steps,
        seed=seed,
        height=height,
        width=width,
        progress=False,
    )
    assert video.frames.shape == (frames, height, width, 3)
    # The control maps it followed: Canny's are OpenCV's own, `none` passes the video; depth's are checked against
    # transformers' DPT in test_annotators.
    expected_maps = {"canny": canny_maps(video_in), "none": video_in}.get(annotator, video.control)
    assert video.control is not None and np.array_equal(video.control, expected_maps)
    assert video.control.std() > 0
    expected = reference_video(reference, expected_maps, seed, steps)
    assert max_pixel_diff(video.frames, expected) <= TOLERANCE
    # Each frame follows its own map: the video moves (so a map given to the wrong frame would show above).
    assert max_pixel_diff(video.frames[1:], video.frames[:-1]) > 10
    # The control does something: at scale 0 the video is another one.
    unguided = guided.generate_video(
        PROMPT, control=video_in, annotator=annotator, steps=steps, seed=seed, height=height, width=width,
        controlnet_scale=0.0, progress=False,
    )  # fmt: skip
    assert max_pixel_diff(unguided.frames, video.frames) > 10
    assert max_pixel_diff(unguided.frames, reference_video(reference, expected_maps, seed, steps, scale=0.0)) <= 2


def test_a_chunked_long_video_equals_the_reference_chunk_procedure(guided, reference):
    video_in = moving_shape(20, 64, 72)
    video = guided.generate_video(
        PROMPT, control=video_in, steps=4, seed=5, height=64, width=72, chunk_size=8, progress=False
    )
    expected = reference_chunks(reference, canny_maps(video_in), seed=5, steps=4, chunk_size=8)
    assert video.frames.shape == expected.shape == (20, 64, 72, 3)
    assert max_pixel_diff(video.frames, expected) <= TOLERANCE


def test_a_batch_of_prompts_and_videos_equals_each_alone(guided):
    video_in = moving_shape(3, 64, 64)
    options = dict(control=video_in, steps=4, height=64, width=64, progress=False)
    batch = guided.generate(["a red car", "a blue bird"], seed=20, videos_per_prompt=2, **options)
    alone = [
        guided.generate_video(p, seed=20 + k, **options) for k, p in enumerate(["a red car"] * 2 + ["a blue bird"] * 2)
    ]
    for k, (together, single) in enumerate(zip(batch, alone, strict=True)):
        assert together.metadata["seed"] == 20 + k
        assert max_pixel_diff(together.frames, single.frames) <= TOLERANCE
    assert max_pixel_diff(batch[0].frames, batch[1].frames) > 10  # seeds differ: so do the videos


def test_plain_requests_still_run_text_to_video_on_a_guided_pipeline(guided, pipeline):
    options = dict(frames=2, steps=3, height=64, width=64, seed=3, progress=False)
    plain = guided.generate_video("a cat", **options)
    assert plain.metadata["model"]["task"] == "text-to-video" and "controlnet" not in plain.metadata["model"]
    assert max_pixel_diff(plain.frames, pipeline.generate_video("a cat", **options).frames) == 0


def test_the_sidecar_records_controlnet_annotator_and_control_video(guided, tmp_path, controlnet_folder):
    from t2v_fast.core.video import write_mp4

    clip = tmp_path / "clip.mp4"
    write_mp4(moving_shape(4, 64, 64), clip, fps=8)
    video = guided.generate_video(
        PROMPT, control=str(clip), annotator="canny", canny_low=50, steps=2, seed=1, progress=False
    )
    meta = video.metadata
    assert meta["model"]["task"] == "guided"
    assert meta["model"]["controlnet"]["id"] == str(controlnet_folder)
    assert len(meta["model"]["controlnet"]["weights_sha256"]) == 64
    assert meta["params"]["annotator"] == "canny" and meta["params"]["canny_low"] == 50
    assert meta["control"]["path"] == str(clip)
    import hashlib

    assert meta["control"]["sha256"] == hashlib.sha256(clip.read_bytes()).hexdigest()
    # The length, rate and size are the control video's (its longer side at the model's native 64 px).
    assert (meta["params"]["frames"], meta["params"]["fps"]) == (4, 8.0)
    assert video.frames.shape == (4, 64, 64, 3)


def test_cli_guided_video_with_saved_control_maps(cli, tmp_path, tiny_folder, controlnet_folder):
    from t2v_fast.core.video import write_mp4

    clip = tmp_path / "clip.mp4"
    write_mp4(moving_shape(3, 48, 64), clip, fps=6)
    out = tmp_path / "out.mp4"
    result = cli(
        "generate", PROMPT, "--model", str(tiny_folder), "--controlnet", str(controlnet_folder),
        "--control", str(clip), "--annotator", "canny", "--steps", "2", "--seed", "4", "--out", str(out),
        "--save-control", "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    from t2v_fast.core.video_input import load_video

    written = load_video(out)
    maps = load_video(out.with_suffix(".control.mp4"))
    assert written.frames.shape == maps.frames.shape == (3, 48, 64, 3)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["control"]["path"] == str(clip) and meta["model"]["task"] == "guided"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--control", "{missing}", "--controlnet", "{controlnet}"], "does not exist"),
        (["--control", "{not_video}", "--controlnet", "{controlnet}"], "not a video"),
        (["--control", "{clip}", "--controlnet", "{controlnet}", "--annotator", "sketch"], "invalid choice: 'sketch'"),
        (["--control", "{clip}"], "guided video needs a ControlNet"),
        (["--control", "{clip}", "--controlnet", "{controlnet}", "--model", "modelscope-tiny-random"], "ModelScope"),
        (["--control", "{clip}", "--controlnet", "{controlnet}", "--canny-low", "250"], "canny_low must not exceed"),
        (["--control", "{clip}", "--controlnet", "{controlnet}", "--start", "9"], "start 9 s is not before its end"),
        (["--control", "{clip}", "--controlnet", "{controlnet}", "--frames", "40"], "fewer than frames=40"),
        (["--control", "{clip}", "--controlnet", "sd15-controlnet-random"], "does not fit model"),
        (["--controlnet", "{controlnet}", "--annotator", "depth"], "do not take it"),
    ],
    ids=[
        "missing", "not a video", "annotator", "no controlnet", "modelscope", "thresholds", "start", "frames",
        "misfit", "guided parameter without control",
    ],
)  # fmt: skip
def test_bad_guided_input_is_one_line_and_exit_2(cli, tmp_path, tiny_folder, controlnet_folder, args, message):
    from t2v_fast.core.video import write_mp4

    clip = tmp_path / "clip.mp4"
    write_mp4(moving_shape(3, 48, 64), clip, fps=6)
    (tmp_path / "notes.mp4").write_text("not a video")
    names = {
        "missing": str(tmp_path / "missing.mp4"),
        "not_video": str(tmp_path / "notes.mp4"),
        "clip": str(clip),
        "controlnet": str(controlnet_folder),
    }
    out = tmp_path / "out.mp4"
    full = ["generate", PROMPT, "--model", str(tiny_folder), "--out", str(out), "--steps", "2", "--quiet"]
    result = cli(*full, *[a.format(**names) for a in args])
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr and not out.exists()


def test_bad_guided_input_in_the_api_is_a_user_error(guided):
    video_in = moving_shape(3, 64, 64)
    with pytest.raises(UserError, match="must be one of canny, depth, none"):
        guided.generate(PROMPT, control=video_in, annotator="sketch", steps=2)
    with pytest.raises(UserError, match="fast mode"):
        guided.generate(PROMPT, control=video_in, cache_interval=2, steps=2)
    with pytest.raises(UserError, match="give both height and width"):
        guided.generate(PROMPT, control=video_in, height=64, steps=2)
    with pytest.raises(UserError, match=r"zero frames|no frames|empty"):
        guided.generate(PROMPT, control=video_in[:0], steps=2)


def test_a_controlnet_that_does_not_fit_is_refused_naming_both(tiny_folder):
    from t2v_fast import load_pipeline

    with pytest.raises(
        UserError, match=r"ControlNet 'sd15-controlnet-random' does not fit model .*cross_attention_dim 768 vs 32"
    ):
        load_pipeline(str(tiny_folder), controlnet="sd15-controlnet-random", device="cpu")


def test_a_dreambooth_style_base_is_just_another_base_folder(tmp_path, tiny_folder, controlnet_folder, guided):
    """A DreamBooth-specialised checkpoint has its base's architecture and other weights: here `tiny-random` with a
    fine-tuned-like UNet. The same ControlNet guides it, and its video is the recipe's on that base, not the first's."""
    import shutil

    from diffusers import UNet2DConditionModel

    from t2v_fast import load_pipeline

    base = shutil.copytree(tiny_folder, tmp_path / "dreambooth")
    unet = UNet2DConditionModel.from_pretrained(base / "unet")
    with torch.no_grad():
        generator = torch.Generator().manual_seed(7)
        for parameter in unet.parameters():
            parameter.add_(0.05 * parameter.std().nan_to_num() * torch.randn(parameter.shape, generator=generator))
    unet.save_pretrained(base / "unet")
    pipe = reference_pipeline(base, controlnet_folder)

    video_in = moving_shape(3, 64, 72)
    options = dict(control=video_in, steps=3, seed=2, height=64, width=72, progress=False)
    specialised = load_pipeline(str(base), controlnet=str(controlnet_folder), device="cpu", dtype="float32")
    video = specialised.generate_video(PROMPT, **options)
    assert max_pixel_diff(video.frames, reference_video(pipe, canny_maps(video_in), seed=2, steps=3)) <= TOLERANCE
    assert max_pixel_diff(video.frames, guided.generate_video(PROMPT, **options).frames) > 10  # the first base's
    assert video.metadata["model"]["id"] == str(base)
