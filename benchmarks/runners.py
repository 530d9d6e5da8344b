"""One runner per contender, all driven through the same stages on the same inputs.

The reference is the family's diffusers pipeline (eager), the baseline users compare with: `ReferenceRunner` is
`TextToVideoZeroPipeline`, which cannot batch videos (its cross-frame attention hard-codes one video), so its
per-video time is that of one video per call; `ModelScopeReferenceRunner` is `TextToVideoSDPipeline`, which batches
prompts with one generator per video, and decodes every frame in one VAE call.
`PipelineRunner` is our pipeline on one backend.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from t2v_fast.core.engine_dir import EngineDir
from t2v_fast.core.families import MODELSCOPE, TEXT2VIDEO_ZERO
from t2v_fast.core.models import ModelCard
from t2v_fast.core.networks import NETWORKS, dims
from t2v_fast.core.pipeline import VideoPipeline, VideoRequest
from t2v_fast.loading import load_pipeline

from .measure import PeakMemory, timed

if TYPE_CHECKING:
    from .harness import BenchConfig


class Unavailable(Exception):
    """This contender cannot run here; the message says why."""


@dataclass
class Workload:
    """What every contender renders: `videos` videos of one prompt each, with fixed seeds."""

    prompts: list[str]
    negative_prompt: str
    seeds: list[int]
    params: dict[str, Any]  # resolved settings, by name
    device: torch.device
    dtype: torch.dtype
    card: ModelCard
    generator: torch.Generator = field(default_factory=lambda: torch.Generator().manual_seed(0))

    @property
    def videos(self) -> int:
        return len(self.prompts)

    def _inputs(self, network: str, unet_batch: int) -> dict[str, torch.Tensor]:
        """Random (never all-zero) inputs of the network table's shapes for this workload, on its device."""
        frames, height, width = self.params["frames"], self.params["height"], self.params["width"]
        shapes = dims(self.card, videos=unet_batch, frames=frames, height=height, width=width, images=frames)
        made = NETWORKS[network].sample_inputs(shapes, torch.float32, self.generator)
        return {name: t.to(self.device, self.dtype) if t.is_floating_point() else t for name, t in made.items()}

    def unet_inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """UNet inputs of the full-video shape: guidance doubles the videos."""
        made = self._inputs("unet", 2 * self.videos)
        return made["sample"], made["timestep"], made["encoder_hidden_states"]

    def latents(self) -> torch.Tensor:
        """The denoised latents of every video, `(videos, frames, C, h, w)`, for timing the decoder."""
        return self._inputs("unet", self.videos)["sample"]


class PipelineRunner:
    """t2v-fast on one backend; `prepare` returns the pipeline and the cold-start timings it cost."""

    def __init__(self, name: str, prepare: Callable[[], tuple[VideoPipeline, dict[str, float]]]):
        self.name = name
        self._prepare = prepare
        self.pipeline: VideoPipeline | None = None
        self.cold: dict[str, float] = {}

    def load(self, work: Workload) -> None:
        self.pipeline, self.cold = self._prepare()
        self.requests = [
            VideoRequest(p, work.negative_prompt, s) for p, s in zip(work.prompts, work.seeds, strict=True)
        ]
        self.unet_args = work.unet_inputs()
        self.latents = work.latents()

    def encode(self) -> Any:
        assert self.pipeline is not None, "load() first"
        return self.pipeline.encode_prompts(self.requests, True)

    def unet(self) -> Any:
        assert self.pipeline is not None, "load() first"
        sample, timestep, text = self.unet_args
        return self.pipeline.backend.predict_noise(sample, timestep, text)

    def decode(self) -> Any:
        assert self.pipeline is not None, "load() first"
        return self.pipeline.decode_video(self.latents)

    def generate(self, work: Workload) -> np.ndarray:
        assert self.pipeline is not None, "load() first"
        videos = self.pipeline.generate(
            work.prompts, negative_prompt=work.negative_prompt, seed=work.seeds, progress=False, **work.params
        )
        return np.stack([v.frames for v in videos])


class DiffusersReference:
    """What both families' references share: loading the diffusers pipeline from the saved folder (timed as the
    cold start), and encoding the prompts with its own `encode_prompt`."""

    name = "reference"

    def __init__(self, folder: Path):
        self.folder = folder
        self.cold: dict[str, float] = {}

    def _load_pipeline(self, pipeline_class: Any, work: Workload) -> None:
        started = time.perf_counter()
        self.pipe = pipeline_class.from_pretrained(str(self.folder), dtype=work.dtype).to(work.device)
        self.pipe.set_progress_bar_config(disable=True)
        self.cold = {"load_s": time.perf_counter() - started}
        self.work = work

    def encode(self) -> Any:
        return self.pipe.encode_prompt(
            self.work.prompts, self.work.device, 1, True, [self.work.negative_prompt] * self.work.videos
        )


class ReferenceRunner(DiffusersReference):
    def load(self, work: Workload) -> None:
        from diffusers import TextToVideoZeroPipeline as Reference
        from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_zero import (
            CrossFrameAttnProcessor2_0,
        )

        self._load_pipeline(Reference, work)
        self.processor = CrossFrameAttnProcessor2_0(batch_size=2 * work.videos)
        sample, self.timestep, text = work.unet_inputs()
        frames = sample.shape[1]
        self.sample, self.text = sample.flatten(0, 1), text.repeat_interleave(frames, 0)
        self.latents = work.latents().flatten(0, 1)

    @torch.no_grad()
    def unet(self) -> Any:
        self.pipe.unet.set_attn_processor(self.processor)
        return self.pipe.unet(self.sample, self.timestep, encoder_hidden_states=self.text).sample

    @torch.no_grad()
    def decode(self) -> Any:
        return self.pipe.decode_latents(self.latents)

    def generate(self, work: Workload) -> np.ndarray:
        videos = []
        for prompt, seed in zip(work.prompts, work.seeds, strict=True):
            images = self.pipe(
                prompt=prompt,
                negative_prompt=work.negative_prompt,
                generator=torch.Generator().manual_seed(seed),
                **reference_arguments(work.params),
            ).images
            videos.append((np.clip(images, 0, 1) * 255).round().astype(np.uint8))
        return np.stack(videos)


class ModelScopeReferenceRunner(DiffusersReference):
    def load(self, work: Workload) -> None:
        from diffusers import TextToVideoSDPipeline

        self._load_pipeline(TextToVideoSDPipeline, work)
        sample, self.timestep, self.text = work.unet_inputs()
        self.sample = sample.transpose(1, 2)  # diffusers' layout: (videos, C, frames, h, w)
        self.latents = work.latents().transpose(1, 2)

    @torch.no_grad()
    def unet(self) -> Any:
        return self.pipe.unet(self.sample, self.timestep, encoder_hidden_states=self.text).sample

    @torch.no_grad()
    def decode(self) -> Any:
        return self.pipe.decode_latents(self.latents)

    def generate(self, work: Workload) -> np.ndarray:
        frames = self.pipe(
            prompt=work.prompts,
            negative_prompt=[work.negative_prompt] * work.videos,
            generator=[torch.Generator().manual_seed(seed) for seed in work.seeds],
            output_type="np",
            **reference_arguments(work.params, MODELSCOPE_REFERENCE_NAMES),
        ).frames
        return (np.clip(frames, 0, 1) * 255).round().astype(np.uint8)


REFERENCE_RUNNERS: dict[str, Callable[[Path], Any]] = {
    TEXT2VIDEO_ZERO.name: ReferenceRunner,
    MODELSCOPE.name: ModelScopeReferenceRunner,
}

REFERENCE_NAMES = {
    "frames": "video_length",
    "height": "height",
    "width": "width",
    "steps": "num_inference_steps",
    "guidance": "guidance_scale",
    "t0": "t0",
    "t1": "t1",
    "motion_x": "motion_field_strength_x",
    "motion_y": "motion_field_strength_y",
}


MODELSCOPE_REFERENCE_NAMES = {
    "frames": "num_frames",
    "height": "height",
    "width": "width",
    "steps": "num_inference_steps",
    "guidance": "guidance_scale",
}


def reference_arguments(params: dict[str, Any], names: dict[str, str] = REFERENCE_NAMES) -> dict[str, Any]:
    """Our generation parameters under the names a diffusers pipeline takes (default: TextToVideoZeroPipeline's)."""
    return {theirs: params[ours] for ours, theirs in names.items() if ours in params}


def torch_runner(
    model: str, device: str, dtype: str, compile_unet: bool, controlnet: str | None = None
) -> PipelineRunner:
    """Our pipeline on the torch backend; with `controlnet` (a preset or folder), the guided pipeline."""

    def prepare():
        started = time.perf_counter()
        pipeline = load_pipeline(model, device=device, dtype=dtype, compile_unet=compile_unet, controlnet=controlnet)
        return pipeline, {"load_s": time.perf_counter() - started}

    return PipelineRunner("torch-compiled" if compile_unet else "torch", prepare)


def onnxruntime_runner(
    model: str,
    device: torch.device,
    export_dtype: str,
    frames: int,
    height: int,
    width: int,
    engines: Path,
    controlnet: str | None = None,
) -> PipelineRunner:
    """Our pipeline on ONNX Runtime over the engine directory `engines`, exported there (fast mode's graphs
    included) by the first section that runs it: the sections of one run share one export. With `controlnet`, an
    export with guided video's `unet_controlnet` instead of fast mode's graphs (the guided section's)."""
    import onnxruntime

    from t2v_fast.backends.onnxruntime import onnxruntime_providers

    providers = onnxruntime_providers()
    if device.type == "cuda" and providers == ["CPUExecutionProvider"]:
        raise Unavailable(
            f"onnxruntime {onnxruntime.__version__} here has only the CPU provider; install onnxruntime-gpu"
        )

    def prepare():
        from export import ExportSettings, export_model

        cold = {}
        if not EngineDir.is_engine_dir(engines):
            started = time.perf_counter()
            settings = ExportSettings(frames, height, width, 1, export_dtype, fast=controlnet is None)
            # Traced on the device the contender runs on: an fp16 model never materialises on the CPU.
            guided = {"controlnet": controlnet} if controlnet else {}
            export_model(model, engines, settings, progress=False, device=str(device), **guided)
            cold["export_s"] = time.perf_counter() - started
        started = time.perf_counter()
        pipeline = load_pipeline(str(engines), backend="onnxruntime")
        return pipeline, {**cold, "load_s": time.perf_counter() - started}

    return PipelineRunner("onnxruntime", prepare)


def tensorrt_runner(
    model: str,
    device: torch.device,
    frames: int,
    height: int,
    width: int,
    videos: int,
    engines: Path,
    controlnet: str | None = None,
) -> PipelineRunner:
    """Our pipeline on TensorRT engines in `engines`, exported (fast mode's graphs included; with `controlnet`,
    guided video's `unet_controlnet` instead) and built there by the first section that runs it."""
    if importlib.util.find_spec("tensorrt") is None:
        raise Unavailable("TensorRT is not installed (pip install 't2v-fast[tensorrt]')")
    if device.type != "cuda":
        raise Unavailable("TensorRT needs a CUDA device")

    def prepare():
        from export import ExportSettings, export_model
        from export.tensorrt_build import build_engines
        from t2v_fast.core.profiles import AxisRange, BuildRanges

        cold = {}
        if not EngineDir.is_engine_dir(engines):
            started = time.perf_counter()
            settings = ExportSettings(frames, height, width, videos, "fp16", fast=controlnet is None)
            guided = {"controlnet": controlnet} if controlnet else {}
            export_model(model, engines, settings, False, str(device), **guided)
            exported = time.perf_counter()
            fixed = [AxisRange(v, v, v) for v in (videos, frames, height, width)]
            build_engines(EngineDir.load(engines), BuildRanges(*fixed), "fp16", progress=False)
            cold = {"export_s": exported - started, "build_s": time.perf_counter() - exported}
        started = time.perf_counter()
        pipeline = load_pipeline(str(engines), backend="tensorrt")
        return pipeline, {**cold, "load_s": time.perf_counter() - started}

    return PipelineRunner("tensorrt", prepare)


def measure_contender(runner: Any, work: Workload, config: BenchConfig, step: str = "unet_call") -> dict[str, Any]:
    """One contender of a section, as every section measures it: cold start, end to end per video (peak memory
    tracked around it), then the stages: text encoding, one denoising step (`runner.unet`, reported as `step`) and VAE
    decode; its frames kept for the section's comparisons."""
    device = work.device
    memory = PeakMemory(device)
    started = time.perf_counter()
    runner.load(work)
    with memory.track():
        first = time.perf_counter()
        frames = runner.generate(work)
        cold = {
            **runner.cold,
            "first_generate_s": time.perf_counter() - first,
            "total_s": time.perf_counter() - started,
        }
        end_to_end = timed(lambda: runner.generate(work), device, max(config.warmup - 1, 0), config.repeats)
    per_video = {
        key: [v / work.videos for v in value] if isinstance(value, list) else value / work.videos
        for key, value in end_to_end.items()
    }
    with torch.inference_mode():
        stages = {
            "text_encoding": timed(runner.encode, device, config.warmup, config.repeats),
            step: timed(runner.unet, device, config.warmup + 1, max(config.repeats, 3)),
            "vae_decode": timed(runner.decode, device, config.warmup, config.repeats),
        }
    return {
        "available": True,
        "cold_start": cold,
        "stages": {**stages, "end_to_end_per_video": per_video},
        "peak_memory_bytes": memory.peak_bytes,
        "memory_before_bytes": memory.baseline_bytes,
        "allocator_peak_bytes": memory.allocator_peak_bytes,
        "_frames": frames,
    }


def run_contenders(
    names: tuple[str, ...],
    config: BenchConfig,
    measure: Callable[[str], dict[str, Any]],
    describe: Callable[[dict[str, Any]], str],
    on_contender: Callable[[dict[str, Any]], None],
    label: str = "",
) -> dict[str, Any]:
    """Each of `names` the run selected, measured by `measure(name)`, in order: an unselected one is reported as such,
    one that cannot run here (`Unavailable`) or fails says why and costs the others nothing. Each result is printed
    (`describe`) and `on_contender` gets the results so far, without frames, after each."""
    results: dict[str, Any] = {}
    for name in names:
        if name not in config.backends:
            reason = "not selected for this run" + (" (--quick)" if config.quick else "")
            results[name] = {"available": False, "reason": reason}
            continue
        try:
            results[name] = measure(name)
        except Unavailable as reason:
            results[name] = {"available": False, "reason": str(reason)}
        except Exception as error:  # one failing contender (e.g. a compiler error on a new GPU) must not cost the rest
            results[name] = {"available": False, "reason": f"failed: {type(error).__name__}: {error}"}
        print(f"{label}{name}: {describe(results[name])}", flush=True)
        on_contender({k: {f: v for f, v in r.items() if f != "_frames"} for k, r in results.items()})
    return results
