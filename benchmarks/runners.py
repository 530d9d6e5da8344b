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
from t2v_fast.core.guidance import ClassifierFreeGuidance, Guider
from t2v_fast.core.models import ModelCard, dtype_name
from t2v_fast.core.networks import NETWORKS, dims
from t2v_fast.core.pipeline import VideoPipeline, VideoRequest
from t2v_fast.loading import load_pipeline

from .measure import PeakMemory, pixel_diff, timed

if TYPE_CHECKING:
    from .harness import BenchConfig


# The contenders of the sections racing our backends against a recipe of their own (guided, edit), in the order they
# run and are reported; torch-compiled is the backends section's only.
SECTION_CONTENDERS = ("reference", "torch", "onnxruntime", "tensorrt")
# The stages run with guidance on, as the UNet stage's doubled batch: the text encoder gets negatives and prompts.
GUIDANCE_ON = ClassifierFreeGuidance(scale=7.5)


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
        """The denoised latents of every video, `(videos, frames, C, h, w)`, for timing the decoder: the UNet's input
        without the input frames' latents an editing UNet takes beside them."""
        return self._inputs("unet", self.videos)["sample"][:, :, : self.card.latent_channels].contiguous()


class PipelineRunner:
    """t2v-fast on one backend; `prepare` returns the pipeline and the cold-start timings it cost."""

    def __init__(self, name: str, prepare: Callable[[], tuple[VideoPipeline, dict[str, float]]]):
        self.name = name
        self._prepare = prepare
        self.pipeline: VideoPipeline | None = None
        self.cold: dict[str, float] = {}
        self.guider: Guider = GUIDANCE_ON  # how the text encoding stage lays out the texts

    def load(self, work: Workload) -> None:
        self.pipeline, self.cold = self._prepare()
        self.requests = [
            VideoRequest(p, work.negative_prompt, s) for p, s in zip(work.prompts, work.seeds, strict=True)
        ]
        self.unet_args = work.unet_inputs()
        self.latents = work.latents()

    def encode(self) -> Any:
        assert self.pipeline is not None, "load() first"
        return self.pipeline.encode_prompts(self.requests, self.guider)

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


class InputVideoRunner(PipelineRunner):
    """Our pipeline on one backend making videos from an input video (the guided and edit sections'): `inputs` are
    its keywords to `generate` (the video and how to read it), `step` the network of the section's denoising step,
    timed at the full video batch with `guider`'s branches; `unet` runs it."""

    def __init__(self, runner: PipelineRunner, inputs: dict[str, Any], step: str, guider: Guider):
        super().__init__(runner.name, runner._prepare)
        self.inputs, self.step, self.guider = inputs, step, guider

    def load(self, work: Workload) -> None:
        super().load(work)
        self.step_args = work._inputs(self.step, self.guider.conditions * work.videos)

    def generate(self, work: Workload) -> np.ndarray:
        assert self.pipeline is not None, "load() first"
        videos = self.pipeline.generate(
            work.prompts, negative_prompt=work.negative_prompt, seed=work.seeds, progress=False, **self.inputs
        )
        return np.stack([v.frames for v in videos])


class DiffusersReference:
    """What both families' references share: loading the diffusers pipeline from the saved folder (timed as the
    cold start), and encoding the prompts with its own `encode_prompt`."""

    name = "reference"

    def __init__(self, folder: Path):
        self.folder = folder
        self.cold: dict[str, float] = {}

    def _load_pipeline(self, pipeline_class: Any, work: Workload, **options: Any) -> None:
        started = time.perf_counter()
        self.pipe = pipeline_class.from_pretrained(str(self.folder), dtype=work.dtype, **options).to(work.device)
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
            videos.append(uint8_frames(images))
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
        return uint8_frames(frames)


class FramesReference(DiffusersReference):
    """What the references of the sections with an input video share: diffusers' image pipeline over `[prompt] *
    frames`, one video per call (its cross-frame attention relates the frames of one video), on our step's inputs
    (`step` at the full video batch with `conditions` branches of guidance) laid out as diffusers' (every frame of
    every video in the batch axis); the pipeline's own decode."""

    def __init__(self, folder: Path, video: np.ndarray, step: str, conditions: int):
        super().__init__(folder)
        self.video, self.step, self.conditions = video, step, conditions
        self._batch = 0

    def _load_pipeline(self, pipeline_class: Any, work: Workload, **options: Any) -> None:
        super()._load_pipeline(pipeline_class, work, **options)
        made = work._inputs(self.step, self.conditions * work.videos)
        frames = made["sample"].shape[1]
        self.sample, self.timestep = made["sample"].flatten(0, 1), made["timestep"]
        self.text = made["encoder_hidden_states"].repeat_interleave(frames, 0)
        self.step_inputs = made
        self.latents = work.latents()

    def _cross_frame(self, batch: int, *modules: Any) -> None:
        """`CrossFrameAttnProcessor(batch_size=batch)` on `modules`: `batch` videos' branches in a call."""
        from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_zero import (
            CrossFrameAttnProcessor,
        )

        if batch != self._batch:
            for module in modules:
                module.set_attn_processor(CrossFrameAttnProcessor(batch_size=batch))
            self._batch = batch

    def _encode_call(self, prompts: list[str], negatives: list[str]) -> Any:
        return self.pipe.encode_prompt(prompts, self.work.device, 1, True, negatives)

    def encode(self) -> Any:
        """What each call of the recipe encodes: `[prompt] * frames` and their negatives."""
        frames, work = len(self.video), self.work
        return [self._encode_call([p] * frames, [work.negative_prompt] * frames) for p in work.prompts]

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


def uint8_frames(images: np.ndarray) -> np.ndarray:
    """A diffusers pipeline's float frames in [0, 1] (`output_type="np"`) as uint8, as our pipelines round them."""
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)


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
    fast: bool = True,
) -> PipelineRunner:
    """Our pipeline on ONNX Runtime over the engine directory `engines`, exported there (fast mode's graphs
    included) by the first section that runs it: the sections of one run share one export. With `controlnet`, an
    export with guided video's `unet_controlnet` instead of fast mode's graphs (the guided section's); without `fast`,
    none of fast mode's graphs (the edit section's, whose model is not the run's)."""
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
            settings = ExportSettings(frames, height, width, 1, export_dtype, fast=fast and controlnet is None)
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
    fast: bool = True,
) -> PipelineRunner:
    """Our pipeline on TensorRT engines in `engines`, exported (fast mode's graphs included unless `fast` is off;
    with `controlnet`, guided video's `unet_controlnet` instead) and built there by the first section that runs it."""
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
            settings = ExportSettings(frames, height, width, videos, "fp16", fast=fast and controlnet is None)
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


def backend_makers(
    config: BenchConfig,
    work: Workload,
    model: Path,
    wrap: Callable[[PipelineRunner], PipelineRunner],
    onnx_engines: Path,
    tensorrt_engines: Path,
    controlnet: str | None = None,
    fast: bool = True,
) -> dict[str, Callable[[], PipelineRunner]]:
    """Our backends' contenders, unloaded, by name: torch eager, ONNX Runtime over `onnx_engines` and TensorRT over
    `tensorrt_engines` (exported there by the first contender that runs them, with `controlnet`, with fast mode's
    graphs when `fast`), each as the section runs it (`wrap`)."""
    device, params, name = work.device, work.params, str(model)
    frames, height, width = params["frames"], params["height"], params["width"]
    export_dtype = "fp16" if work.dtype == torch.float16 else "fp32"
    return {
        "torch": lambda: wrap(
            torch_runner(name, str(device), dtype_name(work.dtype), compile_unet=False, controlnet=controlnet)
        ),
        "onnxruntime": lambda: wrap(
            onnxruntime_runner(name, device, export_dtype, frames, height, width, onnx_engines, controlnet, fast)
        ),
        "tensorrt": lambda: wrap(
            tensorrt_runner(name, device, frames, height, width, config.videos, tensorrt_engines, controlnet, fast)
        ),
    }


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


def export_problem(engines: Path, weights_sha256: str, network: str | None = None, without: str = "") -> str | None:
    """Why the export `engines`, given to a section, cannot run its model (None: it can): it must be an engine
    directory of the model's weights, with `network` where one is named (`without` says what lacking it means)."""
    if not EngineDir.is_engine_dir(engines):
        return "not an engine directory (no engine.json)"
    engine_dir = EngineDir.load(engines, verify_hashes=False)
    if engine_dir.weights_sha256 != weights_sha256:
        return "exported from other weights than the benchmarked model's"
    if network is not None and network not in engine_dir.networks:
        return f"exported without {without} (no {network})"
    return None


def derive_vs_reference(results: dict[str, Any], stages: tuple[str, ...]) -> None:
    """A section's speed-ups over the reference per stage and end to end, and each contender's pixel difference from
    the reference's frames, from figures of this same run; the frames dropped after."""
    reference = results.get("reference", {})
    for result in results.values():
        if not result.get("available") or not reference.get("available"):
            continue
        ours, theirs = result["stages"], reference["stages"]
        result["speedup_vs_reference"] = (
            theirs["end_to_end_per_video"]["median_s"] / ours["end_to_end_per_video"]["median_s"]
        )
        result["stage_speedups_vs_reference"] = {
            stage: theirs[stage]["median_s"] / ours[stage]["median_s"] for stage in stages
        }
        result["pixel_diff_vs_reference"] = pixel_diff(result["_frames"], reference["_frames"])
    for result in results.values():
        result.pop("_frames", None)


def describe_step(step: str, what: str) -> Callable[[dict[str, Any]], str]:
    """A section's line per contender: end to end per video and its denoising step (`step`, described as `what`)."""

    def describe(result: dict[str, Any]) -> str:
        if not result.get("available"):
            return f"not available: {result['reason']}"
        stages = result["stages"]
        video, seconds = stages["end_to_end_per_video"]["median_s"], stages[step]["median_s"]
        return f"{video:.3f} s/video, {what} {seconds * 1e3:.1f} ms"

    return describe


def race_section(
    label: str,
    section: dict[str, Any],
    makers: dict[str, Callable[[], Any]],
    work: Workload,
    config: BenchConfig,
    stages: tuple[str, ...],
    what: str,
    on_contender: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """A section (`label`: guided, edit) racing our backends against its reference recipe: each of
    `SECTION_CONTENDERS` measured on `work` (its step, `stages[1]`, described as `what`), then the figures derived
    from this run; `section` (its own fields) with the contenders, which `on_contender` also gets after each."""
    step = stages[1]
    section["contenders"] = results = run_contenders(
        SECTION_CONTENDERS,
        config,
        lambda name: measure_contender(makers[name](), work, config, step=step),
        describe_step(step, what),
        lambda done: on_contender({**section, "contenders": done}),
        label=f"{label} ",
    )
    derive_vs_reference(results, stages)
    return section
