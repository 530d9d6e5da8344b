"""Video editing (Instruct-Pix2Pix with cross-frame attention) against its reference recipe: diffusers'
`StableDiffusionInstructPix2PixPipeline` with `CrossFrameAttnProcessor(batch_size=3)` on the UNet, the checkpoint's
Euler ancestral scheduler, `prompt=[instruction] * frames`, `image=frames` and one CPU generator, as diffusers
documents it and the original system runs it; then its chunks (the original's chunk procedure), batching, sidecar,
and bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import assert_is_moving_video, max_pixel_diff

from benchmarks.guided import moving_shape  # the benchmark's synthetic video: one for both
from t2v_fast.core.video import write_mp4
from t2v_fast.errors import UserError

# Same seed, same weights, fp32 CPU: what remains is the order of floating-point sums (batched matmuls, the VAE
# encoding a few frames per call where the reference encodes all).
TOLERANCE = 2  # /255 per pixel
INSTRUCTION = "make it winter"


@pytest.fixture(scope="session")
def editor(pix2pix_folder):
    from t2v_fast import load_pipeline

    return load_pipeline(str(pix2pix_folder), device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def reference(pix2pix_folder):
    """The recipe's pipeline over the folder `t2v-fast model save` wrote (loaded with no extra arguments)."""
    from diffusers import StableDiffusionInstructPix2PixPipeline
    from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_zero import (
        CrossFrameAttnProcessor,
    )

    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(pix2pix_folder)
    assert type(pipe.scheduler).__name__ == "EulerAncestralDiscreteScheduler"  # the checkpoint's, kept
    pipe.unet.set_attn_processor(CrossFrameAttnProcessor(batch_size=3))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def reference_edit(pipe, frames: np.ndarray, seed: int, steps: int, image_guidance: float = 1.5) -> np.ndarray:
    """The documented recipe on uint8 frames `(F, H, W, 3)`; uint8 frames back."""
    from PIL import Image

    images = pipe(
        prompt=[INSTRUCTION] * len(frames),
        image=[Image.fromarray(frame) for frame in frames],
        num_inference_steps=steps,
        guidance_scale=7.5,
        image_guidance_scale=image_guidance,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    ).images
    return (images * 255).round().astype(np.uint8)


@pytest.mark.parametrize(
    ("frames", "height", "width", "image_guidance"),
    [(3, 40, 56, 1.5), (5, 72, 48, 1.2)],
    ids=["3 frames 40x56 image guidance 1.5", "5 frames 72x48 image guidance 1.2"],
)
def test_an_edit_equals_the_reference_recipe(editor, reference, frames, height, width, image_guidance):
    """Sizes that are multiples of 8 but not of 64, two lengths, two image guidance scales."""
    video = moving_shape(frames, height, width)
    ours = editor.generate_video(
        INSTRUCTION, video=video, seed=3, steps=4, image_guidance=image_guidance, height=height, width=width,
        progress=False,
    )  # fmt: skip
    expected = reference_edit(reference, video, seed=3, steps=4, image_guidance=image_guidance)
    assert_is_moving_video(expected)
    assert ours.frames.shape == (frames, height, width, 3)
    assert max_pixel_diff(ours.frames, expected) <= TOLERANCE
    # The image guidance is not inert: another scale gives another video.
    other = reference_edit(reference, video, seed=3, steps=4, image_guidance=image_guidance + 1)
    assert max_pixel_diff(other, expected) > 10


def test_a_chunked_edit_equals_the_originals_chunk_procedure(editor, reference):
    """20 frames in chunks of 8: each chunk `[0] + 7 frames`, frame 0's output dropped, the generator seeded again
    for every chunk, the last chunk shorter (Text2Video-Zero's `inference(split_to_chunks=True)`)."""
    video = moving_shape(20, 32, 40)
    ours = editor.generate_video(
        INSTRUCTION, video=video, seed=5, steps=3, chunk_size=8, height=32, width=40, progress=False
    )
    expected = []
    for start in range(0, 20, 7):
        ids = [0, *range(start, min(start + 7, 20))]
        expected.append(reference_edit(reference, video[ids], seed=5, steps=3)[1:])
    assert max_pixel_diff(ours.frames, np.concatenate(expected)) <= TOLERANCE
    assert_is_moving_video(ours.frames)


def test_a_batch_of_instructions_and_videos_equals_each_alone(editor):
    """2 instructions × 2 videos each, seeds 11-14 by the seed rule: each equals its request alone."""
    video = moving_shape(3, 32, 32)
    small = dict(video=video, steps=3, height=32, width=32, progress=False)
    batch = editor.generate(["make it winter", "in Van Gogh style"], videos_per_prompt=2, seed=11, **small)
    assert [v.metadata["seed"] for v in batch] == [11, 12, 13, 14]
    instructions = ["make it winter"] * 2 + ["in Van Gogh style"] * 2
    for k, (instruction, edited) in enumerate(zip(instructions, batch, strict=True)):
        alone = editor.generate_video(instruction, seed=11 + k, **small)
        assert max_pixel_diff(edited.frames, alone.frames) <= TOLERANCE
    assert max_pixel_diff(batch[0].frames, batch[1].frames) > 10  # the seeds tell them apart


def test_the_sidecar_records_the_input_video_and_the_task(editor, tmp_path):
    source = tmp_path / "clip.mp4"
    write_mp4(moving_shape(6, 48, 64), source, fps=6)
    video = editor.generate_video(INSTRUCTION, video=source, seed=1, steps=2, start=0.5, progress=False)
    assert video.frames.shape == (3, 48, 64, 3)  # 0.5 s to the end at 6 fps; its longer side at the native 64
    metadata = video.metadata
    assert metadata["video"]["path"] == str(source)
    from t2v_fast.core.video_input import content_sha256

    assert metadata["video"]["sha256"] == content_sha256(source)
    assert (metadata["model"]["family"], metadata["model"]["task"]) == ("instruct-pix2pix", "edit")
    assert metadata["params"]["image_guidance"] == 1.5 and metadata["params"]["fps"] == 6.0
    assert "encode_video_s" in metadata["timings"]
    video.save(tmp_path / "out.mp4")
    assert json.loads((tmp_path / "out.json").read_text())["video"]["path"] == str(source)


def test_an_instruct_pix2pix_folder_is_its_own_family(pix2pix_folder):
    from t2v_fast.loading import describe_model

    card = describe_model(str(pix2pix_folder))
    assert (card.family, card.task, card.latent_channels) == ("instruct-pix2pix", "edit", 4)
    assert type(card.scheduler).__name__ == "EulerAncestralDiscreteScheduler"


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (dict(video="missing.mp4"), "does not exist"),
        (dict(), "is an Instruct-Pix2Pix model (video editing): give the input video to edit"),
        (dict(video=moving_shape(2, 32, 32), image_guidance=0.5), "image_guidance must be >= 1, got 0.5"),
        (dict(video=moving_shape(2, 32, 32), motion_x=3.0), "motion_x is a Text2Video-Zero parameter"),
        (dict(video=moving_shape(2, 32, 32), controlnet_scale=0.5), "controlnet_scale is a guided video parameter"),
    ],
    ids=["missing video", "no video", "image guidance below 1", "a Text2Video-Zero parameter", "a guided parameter"],
)
def test_a_bad_edit_request_is_one_clear_error(editor, request_, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        editor.generate(INSTRUCTION, steps=2, progress=False, **request_)


def test_a_text_to_video_model_refuses_a_video_to_edit(pipeline):
    with pytest.raises(UserError, match=r"video editing runs Instruct-Pix2Pix models, and .* is Text2Video-Zero"):
        pipeline.generate("a cat", video=moving_shape(2, 32, 32), steps=2, progress=False)
    with pytest.raises(UserError, match="image_guidance is an Instruct-Pix2Pix parameter"):
        pipeline.generate("a cat", image_guidance=2.0, steps=2, progress=False)


def test_the_command_line_edits_a_video_and_refuses_bad_input_in_one_line(cli, pix2pix_folder, tmp_path):
    source = tmp_path / "clip.mp4"
    write_mp4(moving_shape(3, 32, 48), source, fps=4)
    out = tmp_path / "edited.mp4"
    model = ["--model", str(pix2pix_folder)]
    result = cli("generate", INSTRUCTION, *model, "--video", str(source), "--steps", "2", "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert (sidecar["model"]["task"], sidecar["params"]["frames"], sidecar["video"]["path"]) == ("edit", 3, str(source))
    bad = {
        "no video": ([], "give the input video to edit"),
        "missing video": (["--video", str(tmp_path / "nope.mp4")], "does not exist"),
        "image guidance": (["--video", str(source), "--image-guidance", "0.2"], "image_guidance must be >= 1"),
    }
    for name, (extra, message) in bad.items():
        target = tmp_path / f"{name}.mp4"
        result = cli("generate", INSTRUCTION, *model, *extra, "--out", str(target), "--quiet")
        assert result.returncode == 2 and message in result.stderr, (name, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and not target.exists(), name
    plain = cli("generate", "a cat", "--model", "tiny-random", "--video", str(source), "--out", str(out), "--quiet")
    assert plain.returncode == 2 and "video editing runs Instruct-Pix2Pix models" in plain.stderr
    assert len(plain.stderr.strip().splitlines()) == 1
