"""`t2v-fast bench` / `python -m benchmarks`: latency, memory and FLOPs of every backend against the reference.

Everything is measured side by side in one process run, on the same inputs: per stage (text encoding, one UNet call,
VAE decode of all frames, end to end per video), cold start separately from warm runs, medians and p90s, peak memory,
counted FLOPs and achieved TFLOP/s against a matmul ceiling measured in the same run, speed-up against diffusers'
reference, fidelity against the reference's frames, a memory sweep over frame counts, batched throughput, and fast
mode (DeepCache) against exact per backend and on the reference (`fast`), and guided video (ControlNet) and video
editing (Instruct-Pix2Pix) per backend against their reference recipes (`guided`, `edit`, only when selected). The
reference is the model family's diffusers pipeline (`runners.REFERENCE_RUNNERS`). `sections` selects parts, e.g. the
memory sweep alone for a full-size model on a machine where the rest would take hours.
"""

from __future__ import annotations

import datetime as dt
import gc
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from t2v_fast.core.engine_dir import EngineDir
from t2v_fast.core.models import dtype_name, load_components, resolve_device, resolve_dtype, save_components
from t2v_fast.core.params import ParamRequest
from t2v_fast.core.pipeline import VideoPipeline
from t2v_fast.loading import describe_model, load_pipeline
from t2v_fast.quiet import quiet_libraries

from . import BACKENDS, DEFAULT_SECTIONS, RESULTS_ROOT
from .edit import run_edit
from .fast import run_fast
from .guided import check_guided_export, run_guided
from .measure import (
    PeakMemory,
    count_flops,
    describe_machine,
    make_rss_track_live_memory,
    matmul_ceiling,
    pixel_diff,
    timed,
)
from .report import write_outputs
from .runners import (
    REFERENCE_RUNNERS,
    Workload,
    backend_makers,
    measure_contender,
    run_contenders,
    torch_runner,
)


@dataclass
class BenchConfig:
    preset: str = "small-random"
    frames: int | None = None  # the model family's default
    height: int | None = None
    width: int | None = None
    steps: int = 20
    videos: int = 1
    device: str | None = None
    dtype: str | None = None
    warmup: int = 1
    repeats: int = 3
    backends: tuple[str, ...] = BACKENDS
    sweep_frames: tuple[int, ...] = (8, 16, 32, 64)
    sweep_chunk_size: int = 8
    throughput_videos: int = 4
    fast_intervals: tuple[int, ...] = (2, 3, 5)  # the fast section's cache intervals, beside exact (1)
    # An existing export of the preset (fast mode's graphs included, `t2v-fast export PRESET --fast`) that the
    # onnxruntime contender runs instead of exporting (e.g. the test session's); None: exported in the run, timed.
    onnx_engines: str | None = None
    # An existing export of the preset with its ControlNet (`t2v-fast export PRESET --controlnet CONTROLNET`) for the
    # guided section's onnxruntime contender; None: `onnx_engines` when it has `unet_controlnet`, else exported.
    guided_engines: str | None = None
    # An existing export of the edit section's Instruct-Pix2Pix preset (`t2v-fast export pix2pix-tiny-random`) for its
    # onnxruntime contender; None: exported in the run.
    edit_engines: str | None = None
    quick: bool = False
    sections: tuple[str, ...] = DEFAULT_SECTIONS
    out_root: Path = RESULTS_ROOT
    notes: list[str] = field(default_factory=list)

    @classmethod
    def quick_config(cls, **overrides: Any) -> BenchConfig:
        """Seconds on a CPU: the tiny model, few steps and frames, no compilation, and no ONNX export (half a minute
        by itself; `--backends reference,torch,onnxruntime` adds it). Checks the harness, not speed."""
        settings = dict(
            preset="tiny-random",
            frames=4,
            steps=3,
            warmup=0,
            repeats=2,
            sweep_frames=(4, 8),
            sweep_chunk_size=4,
            throughput_videos=2,
            quick=True,
            backends=("reference", "torch", "tensorrt"),
        )
        return cls(**{**settings, **overrides})


def _flops(pipeline: VideoPipeline, work: Workload) -> dict[str, int]:
    sample, timestep, text = work.unet_inputs()
    with torch.inference_mode():
        unet = count_flops(lambda: pipeline.backend.predict_noise(sample, timestep, text))
    video = count_flops(lambda: pipeline.generate(work.prompts, seed=work.seeds, progress=False, **work.params))
    return {"unet_call": unet, "per_video": video // work.videos}


def _memory_sweep(load: Callable[..., VideoPipeline], work: Workload, config: BenchConfig) -> list[dict[str, Any]]:
    """Peak memory of one video as frames grow, 2 steps.

    Text2Video-Zero runs chunked beyond `sweep_chunk_size` frames: memory should stay flat. ModelScope's UNet relates
    all frames at once, so its activations must grow with frames; each frame count runs twice, as we run it
    (feed-forward chunking, decoding a few frames per VAE call) and without those savings (whole feed-forward, every
    frame in one VAE call, as the reference does), to show what they save. `load(**torch_options)` loads the torch
    backend's pipeline; each pipeline is measured alone, the other one released.
    """
    takes = {info.name for info in work.card.family_record.params.infos()}
    params = {**work.params, "steps": 2}
    if "t0" in takes:
        params |= {"t0": 0, "t1": 1}
    runs = []
    for frames in config.sweep_frames:
        chunk = config.sweep_chunk_size if "chunk_size" in takes and frames > config.sweep_chunk_size else None
        runs.append({**params, "frames": frames, "chunk_size": chunk})
    _release(work.device)
    peaks = _peaks(load(), runs)
    rows = [{"frames": r["frames"], "chunk_size": r["chunk_size"], **p} for r, p in zip(runs, peaks, strict=True)]
    if "chunk_size" not in takes:
        _release(work.device)
        without = _peaks(_without_memory_savings(load, max(config.sweep_frames)), runs)
        for row, peak in zip(rows, without, strict=True):
            row["without_savings"] = peak
    _release(work.device)
    return rows


def _peaks(pipeline: VideoPipeline, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each run's peak on `pipeline`, which is dropped on return (the caller holds no reference to it)."""
    return [_peak(pipeline, run) for run in runs]


def _peak(pipeline: VideoPipeline, params: dict[str, Any]) -> dict[str, Any]:
    memory = PeakMemory(pipeline.backend.device)
    started = time.perf_counter()
    with memory.track():
        pipeline.generate("a sweep", seed=0, progress=False, **params)
    return {
        "peak_memory_bytes": memory.peak_bytes,
        "added_bytes": memory.peak_bytes - memory.baseline_bytes,
        "seconds": time.perf_counter() - started,
    }


def _without_memory_savings(load: Callable[..., VideoPipeline], frames: int) -> VideoPipeline:
    """Our savings switched off where they are set: the torch backend built with its feed-forward in one call
    (`feed_forward_chunk=None`), in a pipeline built to decode up to `frames` frames in one VAE call (the pipeline's
    `decode_batch_size`)."""
    loaded = load(feed_forward_chunk=None)
    return type(loaded)(loaded.tokenizer, loaded.scheduler, loaded.backend, decode_batch_size=frames)


def _release(device: torch.device) -> None:
    """Return what dropped pipelines held, so that the next one's peak memory is its own."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _throughput(pipeline: VideoPipeline, work: Workload, config: BenchConfig) -> dict[str, Any]:
    """Videos per hour on this device, one prompt per call versus all prompts in one batched call."""
    count = config.throughput_videos
    prompts, seeds = [f"scene {k}" for k in range(count)], list(range(count))
    torch_device = pipeline.backend.device
    sequential = timed(
        lambda: [
            pipeline.generate(p, seed=s, progress=False, **work.params) for p, s in zip(prompts, seeds, strict=True)
        ],
        torch_device,
        0,
        1,
    )["median_s"]
    batched = timed(lambda: pipeline.generate(prompts, seed=seeds, progress=False, **work.params), torch_device, 0, 1)
    return {
        "videos": count,
        "sequential_videos_per_hour": count * 3600 / sequential,
        "batched_videos_per_hour": count * 3600 / batched["median_s"],
    }


def _dtype_fidelity(model: str, work: Workload, device: str, dtype: str, frames: np.ndarray | None) -> dict[str, Any]:
    """How far the run's reduced precision moves the torch backend's frames from its float32 frames."""
    if dtype == "float32" or frames is None:
        return {"compared": False, "reason": "run in float32" if dtype == "float32" else "torch backend not run"}
    pipeline = load_pipeline(model, device=device, dtype="float32")
    videos = pipeline.generate(
        work.prompts, negative_prompt=work.negative_prompt, seed=work.seeds, progress=False, **work.params
    )
    full = np.stack([v.frames for v in videos])
    diff = np.abs(frames.astype(np.int16) - full.astype(np.int16))
    return {
        "compared": True,
        "dtype": dtype,
        "max_pixel_diff_vs_float32": int(diff.max()),
        "mean_pixel_diff_vs_float32": float(diff.mean()),
    }


def run_benchmark(config: BenchConfig, on_section: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """The whole benchmark; `on_section` gets the result so far after every contender and section, so that a run
    stopped at its time limit has written what it measured."""
    written = on_section or (lambda result: None)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    device_name, dtype_str = str(device), dtype_name(dtype)
    make_rss_track_live_memory()
    spec = describe_model(config.preset)
    request = ParamRequest.of(frames=config.frames, steps=config.steps, height=config.height, width=config.width)
    params = spec.resolve(request).as_dict()
    result: dict[str, Any] = {
        "schema_version": 1,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": describe_machine(device),
        "config": {
            **{k: v for k, v in asdict(config).items() if k not in ("out_root",)},
            "device": device_name,
            "dtype": dtype_str,
            "family": spec.family,
            "resolved_params": params,
        },
    }
    components = load_components(config.preset, device="cpu", dtype="float32")
    work = Workload(
        prompts=[f"a panda playing guitar, take {k}" for k in range(config.videos)],
        negative_prompt="blurry, low quality",
        seeds=list(range(config.videos)),
        params=params,
        device=device,
        dtype=dtype,
        card=components.card,
    )
    # Built once (a full-size random preset takes a minute to initialise on the CPU), saved, and loaded from there
    # by every contender: the reference, our backends, the exports.
    folder = Path(tempfile.mkdtemp(prefix="t2v-bench-model-")) / config.preset
    save_components(components, folder)
    del components
    model = str(folder)
    if config.onnx_engines and {"backends", "fast"} & set(config.sections):
        _check_reused_export(Path(config.onnx_engines), work.card.weights_sha256)
    if config.guided_engines and "guided" in config.sections:  # refused before hours of other sections, not after
        problem = check_guided_export(Path(config.guided_engines), work.card.weights_sha256, None)
        if problem:
            raise ValueError(f"--guided-engines {config.guided_engines}: {problem}")
    written(result)
    makers = contender_makers(config, work, folder, device, dtype)
    if "backends" in config.sections:
        results = _run_contenders(config, work, makers, lambda done: written({**result, "backends": done}))

    # Loaded after the contenders (so their peak memory is their own), each section's pipeline built with the torch
    # backend options it measures: FLOPs, memory sweep, throughput.
    def load(**torch_options: Any) -> VideoPipeline:
        return load_pipeline(model, device=device_name, dtype=dtype_str, torch_options=torch_options)

    if "backends" in config.sections:
        result |= _summarise_contenders(results, load(), config, work, device, dtype, model)
        written(result)
    if "memory_sweep" in config.sections:
        result["memory_sweep"] = _memory_sweep(load, work, config)
        written(result)
    if "throughput" in config.sections:
        result["throughput"] = _throughput(load(), work, config)
        written(result)
    if "fast" in config.sections:
        result["fast"] = run_fast(config, work, makers, load, lambda section: written({**result, "fast": section}))
        written(result)
    if "guided" in config.sections:
        result["guided"] = run_guided(config, work, folder, lambda section: written({**result, "guided": section}))
        written(result)
    if "edit" in config.sections:
        result["edit"] = run_edit(config, work, folder, lambda section: written({**result, "edit": section}))
        written(result)
    return result


def contender_makers(
    config: BenchConfig, work: Workload, folder: Path, device: torch.device, dtype: torch.dtype
) -> dict[str, Callable[[], Any]]:
    """Each contender's runner, unloaded, by name; the ONNX Runtime and TensorRT exports go next to the saved model
    `folder`, so that the sections of a run share them."""
    onnx = Path(config.onnx_engines) if config.onnx_engines else folder.parent / "onnxruntime-engines"
    return {
        "reference": lambda: REFERENCE_RUNNERS[work.card.family](folder),
        **backend_makers(config, work, folder, lambda runner: runner, onnx, folder.parent / "tensorrt-engines"),
        "torch-compiled": lambda: torch_runner(str(folder), str(device), dtype_name(dtype), compile_unet=True),
    }


def _check_reused_export(engines: Path, weights_sha256: str) -> None:
    """An export given to the run (`onnx_engines`) must hold the run's model, fast mode's graphs included: the
    onnxruntime contender runs it, and the fast section its fast graphs."""
    if not EngineDir.is_engine_dir(engines):
        raise ValueError(f"--onnx-engines {engines}: not an engine directory (no engine.json)")
    engine_dir = EngineDir.load(engines, verify_hashes=False)
    if engine_dir.weights_sha256 != weights_sha256:
        raise ValueError(f"--onnx-engines {engines}: exported from other weights than the benchmarked model's")
    if not engine_dir.export_settings.fast:
        raise ValueError(f"--onnx-engines {engines}: exported without --fast (the fast section needs its graphs)")


def _run_contenders(
    config: BenchConfig,
    work: Workload,
    makers: dict[str, Callable[[], Any]],
    on_contender: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """Every selected contender through the same stages; `on_contender` gets the results so far after each."""
    return run_contenders(
        BACKENDS, config, lambda name: measure_contender(makers[name](), work, config), _one_line, on_contender
    )


def _summarise_contenders(
    results: dict[str, Any],
    eager: VideoPipeline,
    config: BenchConfig,
    work: Workload,
    device: torch.device,
    dtype: torch.dtype,
    model: str,
) -> dict[str, Any]:
    """FLOPs, the matmul ceiling and fidelity, and the ratios derived from them, all from this same run."""
    device_name, dtype_str = str(device), dtype_name(dtype)
    ceiling = matmul_ceiling(device, dtype if device.type == "cuda" else torch.float32)
    flops = _flops(eager, work)
    torch_frames = results.get("torch", {}).get("_frames")
    dtype_fidelity = _dtype_fidelity(model, work, device_name, dtype_str, torch_frames)
    _derive(results, flops, ceiling)
    return {"matmul_ceiling": ceiling, "flops": flops, "dtype_fidelity": dtype_fidelity, "backends": results}


def _derive(results: dict[str, Any], flops: dict[str, int], ceiling: dict[str, Any]) -> None:
    """Speed-ups, achieved TFLOP/s and fidelity, from figures measured in this same run."""
    reference = results.get("reference", {})
    reference_frames = reference.get("_frames")
    for result in results.values():
        if not result.get("available"):
            continue
        stages = result["stages"]
        unet_s, video_s = stages["unet_call"]["median_s"], stages["end_to_end_per_video"]["median_s"]
        result["unet_tflops"] = flops["unet_call"] / unet_s / 1e12
        result["unet_fraction_of_ceiling"] = result["unet_tflops"] / ceiling["tflops"]
        result["video_tflops"] = flops["per_video"] / video_s / 1e12
        if reference.get("available"):
            result["speedup_vs_reference"] = reference["stages"]["end_to_end_per_video"]["median_s"] / video_s
            result["unet_speedup_vs_reference"] = reference["stages"]["unet_call"]["median_s"] / unet_s
            diff = pixel_diff(result["_frames"], reference_frames)
            result["max_pixel_diff_vs_reference"] = diff["max"]
            result["mean_pixel_diff_vs_reference"] = diff["mean"]
    for result in results.values():
        result.pop("_frames", None)


def _one_line(result: dict[str, Any]) -> str:
    if not result.get("available"):
        return f"not available: {result['reason']}"
    stages = result["stages"]
    video, unet = stages["end_to_end_per_video"]["median_s"], stages["unet_call"]["median_s"]
    return f"{video:.3f} s/video, UNet call {unet * 1e3:.1f} ms"


def run_and_report(config: BenchConfig) -> Path:
    """Run the benchmark and write results.json, results.md and chart.png; the folder they went to."""
    quiet_libraries()
    folder: list[Path] = []

    def write(result: dict[str, Any]) -> None:
        if not folder:
            folder.append(new_folder(config.out_root, f"{device_slug(result)}-{result['date'][:10]}"))
        write_outputs(result, folder[0])

    write(run_benchmark(config, write))
    return folder[0]


def new_folder(root: Path, name: str) -> Path:
    """`root/name`, or `name-2`, `name-3`, ... when taken: a run never overwrites a result (e.g. a committed one)."""
    for attempt in range(1, 1000):
        folder = root / (name if attempt == 1 else f"{name}-{attempt}")
        try:
            folder.mkdir(parents=True)
        except FileExistsError:
            continue
        return folder
    raise FileExistsError(f"{root} holds 999 results named {name}")


def device_slug(result: dict[str, Any]) -> str:
    machine = result["machine"]
    name = machine.get("gpu") or f"cpu-{machine.get('cpu_cores')}core"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
