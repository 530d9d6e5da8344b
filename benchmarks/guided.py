"""The guided section: guided video (ControlNet over Text2Video-Zero) on each of our backends against its reference
recipe, in one run.

The reference is the recipe `tests/test_guided.py` holds us to: diffusers' `StableDiffusionControlNetPipeline` over the
saved base and ControlNet folders, DDIM from its scheduler's config, `CrossFrameAttnProcessor` on the UNet and the
ControlNet, one `(1, C, h, w)` noise draw repeated over the frames, `[prompt] * frames`, eta 0; one video per call (its
cross-frame attention relates the frames of one video). The model is the run's Text2Video-Zero preset with its
matching ControlNet preset (`CONTROLNET_OF_PRESET`); other presets and ModelScope report the section unavailable.

The control video is a synthetic moving shape at the workload's size and frame count, with annotator `none` (the
video is the control maps): no annotator runs, so its cost is out of the race. Per contender, as the backends section:
text encoding, one guided step (ControlNet and UNet) at the full video batch with guidance, VAE decode of all frames,
end to end per video (medians of warm runs), cold start, peak memory, the pixel difference from the reference's
frames, and speed-ups over the reference's figures of the same run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from t2v_fast.core.engine_dir import EngineDir
from t2v_fast.core.families import TEXT2VIDEO_ZERO
from t2v_fast.core.models import weights_sha256
from t2v_fast.core.presets import CONTROLNET_OF_PRESET

from .runners import (
    GUIDANCE_ON,
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

STAGES = ("text_encoding", "guided_step", "vae_decode", "end_to_end_per_video")
STEP_NETWORK = "unet_controlnet"  # guided video's step: the ControlNet and the UNet in one call
STEP_WHAT = "guided step (ControlNet + UNet)"
NOTE = (
    "the control video is a synthetic moving shape at the run's size and frame count, with annotator none (the video"
    " is the control maps): no annotator runs, so its cost is out of the race"
)


def moving_shape(frames: int, height: int, width: int) -> np.ndarray:
    """A bright square and a disc moving across a dark gradient, uint8 `(F, H, W, 3)`: the section's control video,
    and the tests' (`tests/test_guided.py` holds our guided video to the recipe on it)."""
    ys, xs = np.mgrid[0:height, 0:width]
    video = np.zeros((frames, height, width, 3), np.uint8)
    for k in range(frames):
        frame = video[k]
        frame[...] = (xs * 60 // width)[..., None]
        x0 = 4 + k * max(2, width // (2 * frames))
        frame[height // 4 : height // 4 + height // 3, x0 : x0 + width // 4] = (230, 200, 40)
        disc = (ys - 2 * height // 3) ** 2 + (xs - (width - 8 - 3 * k)) ** 2 < (height // 6) ** 2
        frame[disc] = (40, 90, 250)
    return video


class GuidedRunner(InputVideoRunner):
    """Our guided pipeline on one backend: its step is guided video's (ControlNet and UNet), its videos follow the
    control video."""

    def __init__(self, runner: PipelineRunner, control: np.ndarray, params: dict[str, Any]):
        chosen = {name: params[name] for name in ("steps", "guidance", "height", "width")}
        super().__init__(runner, {"control": control, "annotator": "none", **chosen}, STEP_NETWORK, GUIDANCE_ON)

    def unet(self) -> Any:
        assert self.pipeline is not None, "load() first"
        return self.pipeline.backend.predict_noise_guided(**self.step_args)


class GuidedReferenceRunner(FramesReference):
    """The reference recipe on diffusers' `StableDiffusionControlNetPipeline`, one video per call."""

    def __init__(self, folder: Path, controlnet_folder: Path, control: np.ndarray):
        super().__init__(folder, control, STEP_NETWORK, GUIDANCE_ON.conditions)
        self.controlnet_folder = controlnet_folder

    def load(self, work: Workload) -> None:
        from diffusers import ControlNetModel, DDIMScheduler, StableDiffusionControlNetPipeline
        from PIL import Image

        started = time.perf_counter()
        controlnet = ControlNetModel.from_pretrained(str(self.controlnet_folder), dtype=work.dtype)
        self._load_pipeline(
            StableDiffusionControlNetPipeline,
            work,
            controlnet=controlnet,
            safety_checker=None,
            requires_safety_checker=False,
        )
        self.pipe.scheduler = DDIMScheduler.from_config(self.pipe.scheduler.config)
        self.cold = {"load_s": time.perf_counter() - started}  # the ControlNet's load included
        self.maps = [Image.fromarray(frame) for frame in self.video]
        self.control_maps = self.step_inputs["control"].flatten(0, 1)
        self.scale = float(self.step_inputs["controlnet_scale"])

    @torch.no_grad()
    def unet(self) -> Any:
        """The recipe's step: the ControlNet, then the UNet with its residuals, on our step's shapes."""
        self._cross_frame(2 * self.work.videos, self.pipe.unet, self.pipe.controlnet)
        down, mid = self.pipe.controlnet(
            self.sample,
            self.timestep,
            encoder_hidden_states=self.text,
            controlnet_cond=self.control_maps,
            conditioning_scale=self.scale,
            guess_mode=False,
            return_dict=False,
        )
        return self.pipe.unet(
            self.sample,
            self.timestep,
            encoder_hidden_states=self.text,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
            return_dict=False,
        )[0]

    def generate(self, work: Workload) -> np.ndarray:
        self._cross_frame(2, self.pipe.unet, self.pipe.controlnet)
        params = work.params
        frames, height, width = len(self.video), params["height"], params["width"]
        card = work.card
        videos = []
        for prompt, seed in zip(work.prompts, work.seeds, strict=True):
            shape = (1, card.latent_channels, height // card.vae_scale_factor, width // card.vae_scale_factor)
            latents = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).repeat(frames, 1, 1, 1)
            images = self.pipe(
                prompt=[prompt] * frames,
                negative_prompt=[work.negative_prompt] * frames,
                image=self.maps,
                latents=latents.to(work.device, work.dtype),
                height=height,
                width=width,
                num_inference_steps=params["steps"],
                guidance_scale=params["guidance"],
                eta=0.0,
                output_type="np",
            ).images
            videos.append(uint8_frames(images))
        return np.stack(videos)


def check_guided_export(engines: Path, weights_sha256: str, controlnet_sha256: str | None) -> str | None:
    """Why the export `engines` cannot run the guided section's model (None: it can): it must be an engine directory
    of the run's weights with guided video's `unet_controlnet`, of the run's ControlNet where that is known."""
    problem = export_problem(engines, weights_sha256, STEP_NETWORK, "a ControlNet")
    if problem is not None or controlnet_sha256 is None:
        return problem
    if EngineDir.load(engines, verify_hashes=False).card.controlnet_sha256 != controlnet_sha256:
        return "exported with another ControlNet than the benchmarked one"
    return None


def _makers(
    config: BenchConfig, work: Workload, folder: Path, controlnet: Path, engines: Path, control: np.ndarray
) -> dict[str, Callable[[], Any]]:
    def ours(runner: PipelineRunner) -> PipelineRunner:
        return GuidedRunner(runner, control, work.params)

    trt = folder.parent / "tensorrt-guided-engines"
    return {
        "reference": lambda: GuidedReferenceRunner(folder, controlnet, control),
        **backend_makers(config, work, folder, ours, engines, trt, controlnet=str(controlnet)),
    }


def unavailable_reason(preset: str, family: str) -> str | None:
    """Why the section cannot run for this preset (None: it can)."""
    if family != TEXT2VIDEO_ZERO.name:
        return f"guided video (ControlNet) runs on Text2Video-Zero models; {preset} is {family}"
    if preset not in CONTROLNET_OF_PRESET:
        fitting = ", ".join(f"{base} ({net})" for base, net in CONTROLNET_OF_PRESET.items())
        return f"no ControlNet preset fits {preset}; presets with one: {fitting}"
    return None


def run_guided(
    config: BenchConfig, work: Workload, folder: Path, on_contender: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    """The section: every selected contender of `SECTION_CONTENDERS` on the same guided workload; `on_contender`
    gets the section so far after each contender."""
    why = unavailable_reason(config.preset, work.card.family)
    if why is not None:
        print(f"guided: not available: {why}", flush=True)
        return {"available": False, "reason": why}
    from t2v_fast.families.guided.controlnet import build_preset_controlnet

    name = CONTROLNET_OF_PRESET[config.preset]
    network = build_preset_controlnet(name)
    controlnet = folder.parent / name
    network.save_pretrained(controlnet)
    controlnet_sha256 = weights_sha256(network)
    del network
    params = work.params
    control = moving_shape(params["frames"], params["height"], params["width"])
    engines, export = _engines(config, folder, work.card.weights_sha256, controlnet_sha256)
    section: dict[str, Any] = {
        "available": True,
        "controlnet": name,
        "annotator": "none",
        "control_video": {"frames": params["frames"], "height": params["height"], "width": params["width"]},
        "onnx_engines": export,
        "note": NOTE,
        "contenders": {},
    }
    makers = _makers(config, work, folder, controlnet, engines, control)
    return race_section("guided", section, makers, work, config, STAGES, STEP_WHAT, on_contender)


def _engines(config: BenchConfig, folder: Path, weights: str, controlnet_sha256: str) -> tuple[Path, dict[str, Any]]:
    """The onnxruntime contender's export: `--guided-engines` (refused unless it fits), else `--onnx-engines` when
    it has the run's `unet_controlnet`, else one exported in the run next to the saved model."""
    if config.guided_engines:
        given = Path(config.guided_engines)
        problem = check_guided_export(given, weights, controlnet_sha256)
        if problem:
            raise ValueError(f"--guided-engines {given}: {problem}")
        return given, {"source": "given (--guided-engines)", "path": str(given)}
    if config.onnx_engines and check_guided_export(Path(config.onnx_engines), weights, controlnet_sha256) is None:
        return Path(config.onnx_engines), {"source": "given (--onnx-engines)", "path": config.onnx_engines}
    exported = folder.parent / "onnxruntime-guided-engines"
    return exported, {"source": "exported in the run (its time is the contender's cold start)", "path": str(exported)}
