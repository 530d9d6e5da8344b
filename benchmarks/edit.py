"""The edit section: video editing (Instruct-Pix2Pix with cross-frame attention) on each of our backends against its
reference recipe, in one run.

The reference is the recipe `tests/test_edit.py` holds us to: diffusers' `StableDiffusionInstructPix2PixPipeline` over
the saved model folder, `CrossFrameAttnProcessor(batch_size=3)` on the UNet (three-way guidance: three branches of one
video per call), the checkpoint's Euler ancestral scheduler, `prompt=[instruction] * frames`, `image=frames`, one CPU
generator per video. The model is the Instruct-Pix2Pix preset of the run's preset's size (`EDIT_MODEL_OF_PRESET`),
built and saved in the run; other presets report the section unavailable.

The input video is the guided section's synthetic moving shape at the run's size and frame count, edited in one pass
as the recipe runs it (no chunks). Per contender, as the guided section: text encoding (three-way), one edit step (the
UNet on the noisy latents beside the input frames' latents, at the full video batch with guidance), VAE decode of all
frames, end to end per video (medians of warm runs, the input video's VAE encoding included), cold start, peak memory,
the pixel difference from the reference's frames, and speed-ups over the reference's figures of the same run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from t2v_fast.core.guidance import InstructPix2PixGuidance
from t2v_fast.core.models import load_components, save_components
from t2v_fast.core.params import ParamRequest
from t2v_fast.families.text2video_zero.params import MIN_CHUNK_SIZE

from .guided import moving_shape
from .runners import (
    FramesReference,
    InputVideoRunner,
    PipelineRunner,
    Workload,
    backend_makers,
    export_problem,
    race_section,
    uint8_frames,
)

if TYPE_CHECKING:
    from .harness import BenchConfig

STAGES = ("text_encoding", "edit_step", "vae_decode", "end_to_end_per_video")
# The Instruct-Pix2Pix preset of each run preset's size: the tiny one for the smoke preset, SD 1.5's for the full size.
EDIT_MODEL_OF_PRESET = {"tiny-random": "pix2pix-tiny-random", "sd15-random": "pix2pix-random"}
STEP_NETWORK = "unet"  # an edit step: the UNet taking the input frames' latents beside the noisy latents
STEP_WHAT = "edit step (UNet, three-way)"
INSTRUCTION = "make it winter"
NOTE = (
    "the input video is a synthetic moving shape at the run's size and frame count, edited in one pass (no chunks) as"
    " the recipe runs it; the input video's VAE encoding is part of end to end"
)


class EditRunner(InputVideoRunner):
    """Our video editing pipeline on one backend: its step is the UNet on 8 channels under three-way guidance, its
    videos edit the input video."""

    def __init__(
        self, runner: PipelineRunner, video: np.ndarray, params: dict[str, Any], guider: InstructPix2PixGuidance
    ):
        super().__init__(runner, {"video": video, **params}, STEP_NETWORK, guider)

    def unet(self) -> Any:
        assert self.pipeline is not None, "load() first"
        return self.pipeline.backend.predict_noise(**self.step_args)


class EditReferenceRunner(FramesReference):
    """The reference recipe on diffusers' `StableDiffusionInstructPix2PixPipeline`, one video per call."""

    def __init__(self, folder: Path, video: np.ndarray, guider: InstructPix2PixGuidance):
        super().__init__(folder, video, STEP_NETWORK, guider.conditions)
        self.guider = guider

    def load(self, work: Workload) -> None:
        from diffusers import StableDiffusionInstructPix2PixPipeline
        from PIL import Image

        self._load_pipeline(StableDiffusionInstructPix2PixPipeline, work)
        self.images = [Image.fromarray(frame) for frame in self.video]

    def _encode_call(self, prompts: list[str], negatives: list[str]) -> Any:
        """The pipeline's own three-way encoding (`[prompts, negatives, negatives]`)."""
        return self.pipe._encode_prompt(prompts, self.work.device, 1, True, negatives)

    @torch.no_grad()
    def unet(self) -> Any:
        """The recipe's step: the UNet on our step's shapes, every video's three branches in one call."""
        self._cross_frame(self.conditions * self.work.videos, self.pipe.unet)
        return self.pipe.unet(self.sample, self.timestep, encoder_hidden_states=self.text, return_dict=False)[0]

    def generate(self, work: Workload) -> np.ndarray:
        self._cross_frame(self.conditions, self.pipe.unet)
        frames, videos = len(self.video), []
        for prompt, seed in zip(work.prompts, work.seeds, strict=True):
            images = self.pipe(
                prompt=[prompt] * frames,
                negative_prompt=[work.negative_prompt] * frames,
                image=self.images,
                num_inference_steps=work.params["steps"],
                guidance_scale=self.guider.scale,
                image_guidance_scale=self.guider.image_scale,
                generator=torch.Generator().manual_seed(seed),
                output_type="np",
            ).images
            videos.append(uint8_frames(images))
        return np.stack(videos)


def unavailable_reason(preset: str) -> str | None:
    """Why the section cannot run for this preset (None: it can)."""
    if preset not in EDIT_MODEL_OF_PRESET:
        fitting = ", ".join(f"{base} ({model})" for base, model in EDIT_MODEL_OF_PRESET.items())
        return f"no Instruct-Pix2Pix preset of {preset}'s size; presets with one: {fitting}"
    return None


def _makers(
    config: BenchConfig, work: Workload, folder: Path, engines: Path, video: np.ndarray
) -> dict[str, Callable[[], Any]]:
    guider = InstructPix2PixGuidance(work.params["guidance"], work.params["image_guidance"])

    def ours(runner: PipelineRunner) -> PipelineRunner:
        return EditRunner(runner, video, work.params, guider)

    trt = folder.parent / "tensorrt-edit-engines"
    return {
        "reference": lambda: EditReferenceRunner(folder, video, guider),
        **backend_makers(config, work, folder, ours, engines, trt, fast=False),
    }


def run_edit(
    config: BenchConfig, work: Workload, folder: Path, on_contender: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    """The section: every selected contender of `SECTION_CONTENDERS` editing the same video; `on_contender` gets
    the section so far after each contender. `work` and `folder` are the run's: the edit model is saved beside it."""
    why = unavailable_reason(config.preset)
    if why is not None:
        print(f"edit: not available: {why}", flush=True)
        return {"available": False, "reason": why}
    name = EDIT_MODEL_OF_PRESET[config.preset]
    components = load_components(name, device="cpu", dtype="float32")
    model = folder.parent / name
    save_components(components, model)
    card = components.card
    del components
    run = work.params
    frames, height, width = run["frames"], run["height"], run["width"]
    # The recipe's settings at the run's size and length, in one pass (a chunk of the whole video), with no negative
    # prompt (the documented recipe's).
    request = ParamRequest.of(
        frames=frames, steps=run["steps"], height=height, width=width, chunk_size=max(frames, MIN_CHUNK_SIZE)
    )
    edit = replace(
        work, prompts=[INSTRUCTION] * work.videos, negative_prompt="", params=card.resolve(request).as_dict(), card=card
    )
    video = moving_shape(frames, height, width)
    engines, export = _engines(config, model, card.weights_sha256)
    section: dict[str, Any] = {
        "available": True,
        "model": name,
        "instruction": INSTRUCTION,
        "input_video": {"frames": frames, "height": height, "width": width},
        "guidance": edit.params["guidance"],
        "image_guidance": edit.params["image_guidance"],
        "onnx_engines": export,
        "note": NOTE,
        "contenders": {},
    }
    makers = _makers(config, edit, model, engines, video)
    return race_section("edit", section, makers, edit, config, STAGES, STEP_WHAT, on_contender)


def _engines(config: BenchConfig, model: Path, weights: str) -> tuple[Path, dict[str, Any]]:
    """The onnxruntime contender's export: `--edit-engines` (refused unless it holds the edit model), else one
    exported in the run next to the saved edit model."""
    if config.edit_engines:
        given = Path(config.edit_engines)
        problem = export_problem(given, weights)
        if problem:
            raise ValueError(f"--edit-engines {given}: {problem}")
        return given, {"source": "given (--edit-engines)", "path": str(given)}
    exported = model.parent / "onnxruntime-edit-engines"
    return exported, {"source": "exported in the run (its time is the contender's cold start)", "path": str(exported)}
