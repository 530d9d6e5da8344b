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
from t2v_fast.core.models import dtype_name, weights_sha256
from t2v_fast.core.presets import CONTROLNET_OF_PRESET

from .measure import pixel_diff
from .runners import (
    PipelineRunner,
    Workload,
    measure_contender,
    onnxruntime_runner,
    run_contenders,
    tensorrt_runner,
    torch_runner,
)

if TYPE_CHECKING:
    from .harness import BenchConfig

# The section's contenders, in the order they run and are reported (torch-compiled is the backends section's only).
GUIDED_CONTENDERS = ("reference", "torch", "onnxruntime", "tensorrt")
STAGES = ("text_encoding", "guided_step", "vae_decode", "end_to_end_per_video")
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


def _step_inputs(work: Workload) -> dict[str, torch.Tensor]:
    """`unet_controlnet`'s inputs at the full video batch with guidance (twice the videos), on the work's device."""
    return work._inputs("unet_controlnet", 2 * work.videos)


class GuidedRunner(PipelineRunner):
    """Our guided pipeline on one backend: a `PipelineRunner` whose step is guided video's (ControlNet and UNet)
    and whose videos follow the control video."""

    def __init__(self, runner: PipelineRunner, control: np.ndarray):
        super().__init__(runner.name, runner._prepare)
        self.control = control

    def load(self, work: Workload) -> None:
        super().load(work)
        self.step_args = _step_inputs(work)

    def unet(self) -> Any:
        assert self.pipeline is not None, "load() first"
        return self.pipeline.backend.predict_noise_guided(**self.step_args)

    def generate(self, work: Workload) -> np.ndarray:
        assert self.pipeline is not None, "load() first"
        params = work.params
        videos = self.pipeline.generate(
            work.prompts,
            negative_prompt=work.negative_prompt,
            seed=work.seeds,
            control=self.control,
            annotator="none",
            steps=params["steps"],
            guidance=params["guidance"],
            height=params["height"],
            width=params["width"],
            progress=False,
        )
        return np.stack([v.frames for v in videos])


class GuidedReferenceRunner:
    """The reference recipe on diffusers' `StableDiffusionControlNetPipeline`, one video per call."""

    name = "reference"

    def __init__(self, folder: Path, controlnet_folder: Path, control: np.ndarray):
        self.folder, self.controlnet_folder, self.control = folder, controlnet_folder, control
        self.cold: dict[str, float] = {}
        self._batch = 0

    def load(self, work: Workload) -> None:
        from diffusers import ControlNetModel, DDIMScheduler, StableDiffusionControlNetPipeline
        from PIL import Image

        started = time.perf_counter()
        controlnet = ControlNetModel.from_pretrained(str(self.controlnet_folder), dtype=work.dtype)
        pipe = StableDiffusionControlNetPipeline.from_pretrained(
            str(self.folder),
            controlnet=controlnet,
            safety_checker=None,
            requires_safety_checker=False,
            dtype=work.dtype,
        ).to(work.device)
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe
        self.cold = {"load_s": time.perf_counter() - started}
        self.work = work
        self.maps = [Image.fromarray(frame) for frame in self.control]
        made = _step_inputs(work)
        frames = made["sample"].shape[1]
        # diffusers' layout: every frame of every video in the batch axis.
        self.sample, self.timestep = made["sample"].flatten(0, 1), made["timestep"]
        self.text = made["encoder_hidden_states"].repeat_interleave(frames, 0)
        self.control_maps, self.scale = made["control"].flatten(0, 1), float(made["controlnet_scale"])
        self.latents = work.latents()

    def _cross_frame(self, batch: int) -> None:
        """`CrossFrameAttnProcessor(batch_size=batch)` on the UNet and the ControlNet: `batch` videos in a call."""
        from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_zero import (
            CrossFrameAttnProcessor,
        )

        if batch != self._batch:
            self.pipe.unet.set_attn_processor(CrossFrameAttnProcessor(batch_size=batch))
            self.pipe.controlnet.set_attn_processor(CrossFrameAttnProcessor(batch_size=batch))
            self._batch = batch

    def encode(self) -> Any:
        """What each call of the recipe encodes: `[prompt] * frames` and their negatives."""
        frames, work = len(self.control), self.work
        return [
            self.pipe.encode_prompt([p] * frames, work.device, 1, True, [work.negative_prompt] * frames)
            for p in work.prompts
        ]

    @torch.no_grad()
    def unet(self) -> Any:
        """The recipe's step: the ControlNet, then the UNet with its residuals, on our step's shapes."""
        self._cross_frame(2 * self.work.videos)
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

    @torch.no_grad()
    def decode(self) -> Any:
        """The pipeline's decode of each video's frames (`output_type="np"`)."""
        vae = self.pipe.vae
        return [
            self.pipe.image_processor.postprocess(
                vae.decode(video / vae.config.scaling_factor, return_dict=False)[0], output_type="np"
            )
            for video in self.latents
        ]

    def generate(self, work: Workload) -> np.ndarray:
        self._cross_frame(2)
        params = work.params
        frames, height, width = len(self.control), params["height"], params["width"]
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
            videos.append((np.clip(images, 0, 1) * 255).round().astype(np.uint8))
        return np.stack(videos)


Runner = GuidedRunner | GuidedReferenceRunner


def check_guided_export(engines: Path, weights_sha256: str, controlnet_sha256: str | None) -> str | None:
    """Why the export `engines` cannot run the guided section's model (None: it can): it must be an engine directory
    of the run's weights with guided video's `unet_controlnet`, of the run's ControlNet where that is known."""
    if not EngineDir.is_engine_dir(engines):
        return "not an engine directory (no engine.json)"
    engine_dir = EngineDir.load(engines, verify_hashes=False)
    if engine_dir.weights_sha256 != weights_sha256:
        return "exported from other weights than the benchmarked model's"
    if "unet_controlnet" not in engine_dir.networks:
        return "exported without a ControlNet (no unet_controlnet)"
    if controlnet_sha256 is not None and engine_dir.card.controlnet_sha256 != controlnet_sha256:
        return "exported with another ControlNet than the benchmarked one"
    return None


def _makers(
    config: BenchConfig, work: Workload, folder: Path, controlnet: Path, engines: Path, control: np.ndarray
) -> dict[str, Callable[[], Runner]]:
    device, params, model, net = work.device, work.params, str(folder), str(controlnet)
    frames, height, width = params["frames"], params["height"], params["width"]
    export_dtype = "fp16" if work.dtype == torch.float16 else "fp32"
    return {
        "reference": lambda: GuidedReferenceRunner(folder, controlnet, control),
        "torch": lambda: GuidedRunner(
            torch_runner(model, str(device), dtype_name(work.dtype), compile_unet=False, controlnet=net), control
        ),
        "onnxruntime": lambda: GuidedRunner(
            onnxruntime_runner(model, device, export_dtype, frames, height, width, engines, controlnet=net), control
        ),
        "tensorrt": lambda: GuidedRunner(
            tensorrt_runner(
                model, device, frames, height, width, config.videos, folder.parent / "tensorrt-guided-engines", net
            ),
            control,
        ),
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
    """The section: every selected contender of `GUIDED_CONTENDERS` on the same guided workload; `on_contender` gets
    the section so far after each contender."""
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
    section["contenders"] = results = run_contenders(
        GUIDED_CONTENDERS,
        config,
        lambda name: measure_contender(makers[name](), work, config, step="guided_step"),
        _one_line,
        lambda done: on_contender({**section, "contenders": done}),
        label="guided ",
    )
    _derive(results)
    return section


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


def _derive(results: dict[str, Any]) -> None:
    """Speed-ups over the reference per stage and end to end, and each contender's pixel difference from the
    reference's frames, from figures of this same run; the frames dropped after."""
    reference = results.get("reference", {})
    for result in results.values():
        if not result.get("available") or not reference.get("available"):
            continue
        ours, theirs = result["stages"], reference["stages"]
        result["speedup_vs_reference"] = (
            theirs["end_to_end_per_video"]["median_s"] / ours["end_to_end_per_video"]["median_s"]
        )
        result["stage_speedups_vs_reference"] = {
            stage: theirs[stage]["median_s"] / ours[stage]["median_s"] for stage in STAGES
        }
        result["pixel_diff_vs_reference"] = pixel_diff(result["_frames"], reference["_frames"])
    for result in results.values():
        result.pop("_frames", None)


def _one_line(result: dict[str, Any]) -> str:
    if not result.get("available"):
        return f"not available: {result['reason']}"
    stages = result["stages"]
    video, step = stages["end_to_end_per_video"]["median_s"], stages["guided_step"]["median_s"]
    return f"{video:.3f} s/video, guided step (ControlNet + UNet) {step * 1e3:.1f} ms"
