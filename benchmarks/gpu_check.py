"""The one prepared command a lent GPU runs: environment, correctness on CUDA, then the benchmark (see README.md).

A GPU is lent rarely and briefly (one command of at most 9 minutes), so this script is rehearsed on the CPU with
`--quick` in the test suite, writes `gpu_check.json` and `gpu_check.md` under `--out` after every step (a run stopped
at its limit still returns what it measured), and keeps going past a failing step, recording the error.

Sections:
1. environment: GPU, driver, torch, CUDA, package versions, date.
2. correctness, with TF32 off so that float32 is float32: per network (text encoder, UNet, VAE decoder), float16 and
   bfloat16 against float32 on the same device, relative to the output's RMS, finite outputs; end to end, our
   float32 pipeline against diffusers' reference pipeline (both families) and float16 against float32; batching
   (two videos in one call against each alone).
3. benchmark: the harness (`harness.run_benchmark`) on `sd15-random`, 8 frames, 512², 50 steps, float16: reference
   eager, torch eager, torch compiled; device peak memory; UNet TFLOP/s against the matmul ceiling measured in the
   same process; videos/hour batched; the project's goals judged from those figures; and fast mode (DeepCache) at
   cache interval 3 against exact, on the reference (DeepCache's own helper) and the torch backend.

It imports neither prefect nor imageio-ffmpeg and writes no MP4: the GPU machine has neither.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from t2v_fast.backends.check import DEFAULT_TOLERANCES, compare
from t2v_fast.backends.torch import TorchBackend
from t2v_fast.core.models import ModelCard, load_components, save_components
from t2v_fast.core.networks import NETWORKS, dims
from t2v_fast.core.params import ParamRequest
from t2v_fast.loading import describe_model
from t2v_fast.quiet import quiet_libraries

from .harness import BenchConfig, run_benchmark
from .measure import describe_machine
from .runners import REFERENCE_RUNNERS, Workload, torch_runner

# bfloat16 keeps 8 mantissa bits to float16's 11: rounding 2^3 = 8× coarser, so 8× float16's tolerance.
BF16_FACTOR = 8
# End to end, float32 against diffusers' float32 reference and batched against one at a time: rounding of the final
# uint8 conversion only (the repository's own reference tests use the same 2/255).
PIXEL_TOLERANCE = 2
# Float16 against float32 over a whole denoising run: a sanity bound on the mean difference (of 255), not a fidelity
# claim: with random weights small per-step differences can grow through the sampler.
LOW_PRECISION_MEAN_PIXEL_BOUND = 10.0
# The project's goals (README): judged from the benchmark's figures.
GOALS = {
    "end_to_end_speedup_vs_reference": 2.0,
    "unet_fraction_of_matmul_ceiling": 0.6,
    "peak_memory_gib_one_video": 6.0,
    "batched_throughput_vs_reference_one_at_a_time": 2.5,
}
FORBIDDEN_MODULES = ("prefect", "imageio_ffmpeg")


@dataclass(frozen=True)
class CheckPlan:
    """What the run covers; `quick` is the CPU rehearsal (tiny presets, a few steps)."""

    device: str
    quick: bool
    presets: tuple[str, ...]  # one per family, for correctness
    frames: int
    size: int
    steps: int
    bench: BenchConfig

    @classmethod
    def make(cls, device: str, quick: bool) -> CheckPlan:
        if quick:
            # The smallest work that still runs every code path: 2 frames of 32² (4² latents), 2 steps.
            bench = BenchConfig.quick_config(
                device=device,
                backends=("reference", "torch"),
                sections=("backends", "throughput", "fast"),
                fast_intervals=(3,),
                repeats=2,
                frames=2,
                height=32,
                width=32,
                steps=2,
            )
            return cls(device, True, ("tiny-random", "modelscope-tiny-random"), 2, 32, 2, bench)
        bench = BenchConfig(
            preset="sd15-random",
            frames=8,
            height=512,
            width=512,
            steps=50,
            device=device,
            dtype="float16",
            warmup=1,
            repeats=3,
            backends=("reference", "torch", "torch-compiled"),
            sections=("backends", "throughput", "fast"),
            fast_intervals=(3,),
            throughput_videos=4,
        )
        return cls(device, False, ("small-random", "modelscope-tiny-random"), 8, 256, 20, bench)


class Recorder:
    """The result so far, written as JSON and markdown after every step."""

    def __init__(self, out: Path):
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.result: dict[str, Any] = {"schema_version": 1, "started": _now(), "sections": {}}

    def section(self, name: str, run: Callable[[Callable[[dict[str, Any]], None]], dict[str, Any]]) -> None:
        """Run one section; `run` may report partial results through its argument. Errors are recorded, not raised."""
        started = time.perf_counter()
        entry: dict[str, Any] = {"status": "running"}
        self.result["sections"][name] = entry

        def partial(values: dict[str, Any]) -> None:
            entry.update(values, seconds=round(time.perf_counter() - started, 2))
            self.write()

        self.write()
        try:
            entry.update(run(partial), status="done")
        except Exception as error:  # a failing step must not cost the steps after it
            entry.update(status="error", error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc())
        entry["seconds"] = round(time.perf_counter() - started, 2)
        print(f"gpu_check: {name} {entry['status']} in {entry['seconds']} s", flush=True)
        self.write()

    def write(self) -> None:
        self.result["updated"] = _now()
        (self.out / "gpu_check.json").write_text(json.dumps(self.result, indent=2, default=str) + "\n")
        (self.out / "gpu_check.md").write_text(markdown(self.result))


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def environment(device: torch.device) -> dict[str, Any]:
    import diffusers
    import transformers

    info: dict[str, Any] = {
        "date": _now(),
        "machine": describe_machine(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": sys.version.split()[0],
    }
    try:
        import onnxruntime

        info["onnxruntime"] = {"version": onnxruntime.__version__, "providers": onnxruntime.get_available_providers()}
    except ImportError:
        info["onnxruntime"] = None
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
        info["driver"] = _nvidia_smi("driver_version")
    return info


def _nvidia_smi(field: str) -> str | None:
    try:
        run = subprocess.run(
            ["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return run.stdout.strip().splitlines()[0] if run.returncode == 0 and run.stdout.strip() else None


def tf32_off() -> None:
    """float32 references in float32: no TF32 tensor cores for matmuls or convolutions."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def network_inputs(info: ModelCard, frames: int, size: int) -> dict[str, dict[str, torch.Tensor]]:
    """Random inputs of the shapes generation sends (guided batch of one video), from the network table."""
    shapes = dims(info, videos=2, frames=frames, height=size, width=size, images=min(frames, 8))
    generator = torch.Generator().manual_seed(0)
    return {name: network.sample_inputs(shapes, torch.float32, generator) for name, network in NETWORKS.items()}


def _calls(backend: TorchBackend, inputs: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    def cast(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(backend.device, backend.dtype)

    unet = inputs["unet"]
    with torch.inference_mode():
        return {
            "text_encoder": backend.encode_text(inputs["text_encoder"]["input_ids"]),
            "unet": backend.predict_noise(cast(unet["sample"]), unet["timestep"], cast(unet["encoder_hidden_states"])),
            "vae_decoder": backend.decode_latents(cast(inputs["vae_decoder"]["latents"])),
        }


def per_network(plan: CheckPlan, preset: str) -> list[dict[str, Any]]:
    """float16 and bfloat16 against float32, network by network, on the device (channels-last where it applies)."""
    reference_components = load_components(preset, device=plan.device, dtype="float32")
    inputs = network_inputs(reference_components.card, plan.frames, plan.size)
    expected = {k: v.float().cpu() for k, v in _calls(TorchBackend(reference_components), inputs).items()}
    del reference_components
    rows = []
    for dtype, factor in (("float16", 1), ("bfloat16", BF16_FACTOR)):
        backend = TorchBackend(load_components(preset, device=plan.device, dtype=dtype))
        for component, actual in _calls(backend, inputs).items():
            tolerance = DEFAULT_TOLERANCES["fp16"][component] * factor
            result = compare("torch", component, dtype, actual, expected[component], tolerance)
            finite = bool(torch.isfinite(actual).all())
            rows.append(
                {
                    "preset": preset,
                    "component": component,
                    "dtype": dtype,
                    "relative_error": result.relative_error,
                    "max_abs_error": result.max_abs_error,
                    "reference_rms": result.reference_rms,
                    "tolerance": tolerance,
                    "finite": finite,
                    "passed": result.passed and finite,
                }
            )
    return rows


def _pixel_diff(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return {"max_pixel_diff": int(diff.max()), "mean_pixel_diff": float(diff.mean())}


def end_to_end(plan: CheckPlan, preset: str, folder: Path, info: ModelCard) -> dict[str, Any]:
    """Our pipeline against diffusers' reference (float32), float16 against float32, batched against one at a time."""
    device = torch.device(plan.device)
    spec = describe_model(str(folder))
    request = ParamRequest.of(frames=plan.frames, steps=plan.steps, height=plan.size, width=plan.size)
    params = spec.resolve(request).as_dict()
    family = spec.family

    def workload(dtype: torch.dtype, videos: int) -> Workload:
        return Workload(
            prompts=[f"a red fox in the snow, take {k}" for k in range(videos)],
            negative_prompt="blurry",
            seeds=list(range(videos)),
            params=params,
            device=device,
            dtype=dtype,
            card=info,
        )

    reference = REFERENCE_RUNNERS[family](folder)
    work = workload(torch.float32, 1)
    reference.load(work)
    expected = reference.generate(work)
    del reference
    rows: dict[str, Any] = {"preset": preset, "family": family, "params": params}
    ours32 = torch_runner(str(folder), plan.device, "float32", compile_unet=False)
    ours32.load(work)
    full = ours32.generate(work)
    rows["float32_vs_reference"] = {**_pixel_diff(full, expected), "tolerance": PIXEL_TOLERANCE}
    rows["float32_vs_reference"]["passed"] = rows["float32_vs_reference"]["max_pixel_diff"] <= PIXEL_TOLERANCE
    both = workload(torch.float32, 2)
    batched = ours32.generate(both)
    alone = np.concatenate([full, ours32.generate(_single(both, 1))])  # video 0 of `both` is `work`
    rows["batched_vs_alone_float32"] = {**_pixel_diff(batched, alone), "tolerance": PIXEL_TOLERANCE}
    rows["batched_vs_alone_float32"]["passed"] = rows["batched_vs_alone_float32"]["max_pixel_diff"] <= PIXEL_TOLERANCE
    del ours32
    ours16 = torch_runner(str(folder), plan.device, "float16", compile_unet=False)
    ours16.load(work)
    half = ours16.generate(work)
    rows["float16_vs_float32"] = {**_pixel_diff(half, full), "mean_bound": LOW_PRECISION_MEAN_PIXEL_BOUND}
    rows["float16_vs_float32"]["passed"] = (
        rows["float16_vs_float32"]["mean_pixel_diff"] <= LOW_PRECISION_MEAN_PIXEL_BOUND
    )
    batched16 = ours16.generate(both)
    alone16 = np.concatenate([half, ours16.generate(_single(both, 1))])
    rows["batched_vs_alone_float16"] = _pixel_diff(batched16, alone16)  # reported: kernels may differ by batch size
    return rows


def _single(work: Workload, k: int) -> Workload:
    return Workload(
        [work.prompts[k]], work.negative_prompt, [work.seeds[k]], work.params, work.device, work.dtype, work.card
    )


def correctness(plan: CheckPlan, report: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    tf32_off()
    done: dict[str, Any] = {"per_network": [], "end_to_end": []}
    for preset in plan.presets:
        done["per_network"] += per_network(plan, preset)
        report(done)
    for preset in plan.presets:
        folder = Path(tempfile.mkdtemp(prefix="t2v-gpu-check-")) / preset
        components = load_components(preset, device="cpu", dtype="float32")
        save_components(components, folder)
        done["end_to_end"].append(end_to_end(plan, preset, folder, components.card))
        report(done)
    done["families"] = sorted({row["family"] for row in done["end_to_end"]})
    done["passed"] = all(row["passed"] for row in done["per_network"]) and all(
        row[key]["passed"]
        for row in done["end_to_end"]
        for key in ("float32_vs_reference", "batched_vs_alone_float32", "float16_vs_float32")
    )
    return done


def benchmark(plan: CheckPlan, report: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    result = run_benchmark(plan.bench, lambda partial: report({"result": partial}))
    return {"result": result, "goals": goals(result)}


def goals(result: dict[str, Any]) -> dict[str, Any]:
    """The README's goals, each with the measured figure and whether it is met (None where not measured)."""
    backends = result.get("backends", {})
    ours = [backends[n] for n in ("torch-compiled", "torch") if backends.get(n, {}).get("available")]
    best = min(ours, key=lambda r: r["stages"]["end_to_end_per_video"]["median_s"]) if ours else None
    reference = backends.get("reference", {})
    figures: dict[str, float | None] = {
        "end_to_end_speedup_vs_reference": best.get("speedup_vs_reference") if best else None,
        "unet_fraction_of_matmul_ceiling": max((r["unet_fraction_of_ceiling"] for r in ours), default=None),
        "peak_memory_gib_one_video": min((r["peak_memory_bytes"] / 2**30 for r in ours), default=None),
        "batched_throughput_vs_reference_one_at_a_time": None,
    }
    throughput = result.get("throughput")
    if throughput and reference.get("available"):
        reference_per_hour = 3600 / reference["stages"]["end_to_end_per_video"]["median_s"]
        figures["batched_throughput_vs_reference_one_at_a_time"] = (
            throughput["batched_videos_per_hour"] / reference_per_hour
        )
    judged = {}
    for name, target in GOALS.items():
        value = figures[name]
        met = None if value is None else (value <= target if name.startswith("peak") else value >= target)
        judged[name] = {"value": value, "target": target, "met": met}
    return judged


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# GPU check ({result.get('updated', '')})", ""]
    sections = result["sections"]
    lines += ["| section | status | seconds |", "| --- | --- | --- |"]
    lines += [f"| {name} | {s['status']} | {s.get('seconds', '-')} |" for name, s in sections.items()]
    env = sections.get("environment", {})
    if env.get("status") == "done":
        lines += [
            "",
            f"{env.get('gpu') or env['machine'].get('cpu')}, driver {env.get('driver')}, torch {env['torch']}"
            f" (CUDA {env['cuda']}), diffusers {env['diffusers']}, {env['date']}.",
        ]
    rows = sections.get("correctness", {}).get("per_network", [])
    if rows:
        lines += [
            "",
            "| preset | network | dtype | max err / RMS | tolerance | finite | result |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {r['preset']} | {r['component']} | {r['dtype']} | {r['relative_error']:.2e} | {r['tolerance']:.0e}"
            f" | {r['finite']} | {'pass' if r['passed'] else 'FAIL'} |"
            for r in rows
        ]
    for row in sections.get("correctness", {}).get("end_to_end", []):
        parts = [
            f"{key}: max {v['max_pixel_diff']}, mean {v['mean_pixel_diff']:.2f}"
            for key, v in row.items()
            if isinstance(v, dict) and "max_pixel_diff" in v
        ]
        lines += ["", f"End to end, {row['preset']} ({row['family']}): " + "; ".join(parts) + " (of 255)."]
    goals_ = sections.get("benchmark", {}).get("goals")
    if goals_:
        lines += ["", "| goal | measured | target | met |", "| --- | --- | --- | --- |"]
        lines += [f"| {name} | {_figure(g['value'])} | {g['target']} | {g['met']} |" for name, g in goals_.items()]
    bench = sections.get("benchmark", {}).get("result", {})
    for name, r in bench.get("backends", {}).items():
        if r.get("available"):
            stages = r["stages"]
            lines.append(
                f"- {name}: {stages['end_to_end_per_video']['median_s']:.3f} s/video, UNet call"
                f" {stages['unet_call']['median_s'] * 1e3:.1f} ms, peak {r['peak_memory_bytes'] / 2**30:.2f} GiB"
            )
        else:
            lines.append(f"- {name}: not available: {r['reason']}")
    for name, entry in bench.get("fast", {}).get("contenders", {}).items():
        lines += [f"- fast mode, {name}: {_fast_line(entry)}"]
    return "\n".join([*lines, ""])


def _fast_line(entry: dict[str, Any]) -> str:
    """A fast-section contender's rows in one line: time, speed-up over its exact run and drift from it."""
    if not entry["available"]:
        return f"not available: {entry['reason']}"
    parts = []
    for r in entry["runs"]:
        if not r["available"]:
            parts.append(f"interval {r['cache_interval']} not available: {r['reason']}")
            continue
        part = f"interval {r['cache_interval']} {r['end_to_end_per_video']['median_s']:.3f} s/video"
        if r["cache_interval"] > 1 and "speedup_vs_exact" in r:
            drift = r["drift_vs_exact"]
            part += f" ({r['speedup_vs_exact']:.2f}× exact, drift max {drift['max']} mean {drift['mean']:.2f})"
        parts.append(part)
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CPU rehearsal: tiny presets, a few steps, seconds")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default: $OUT, else a new temp folder)")
    parser.add_argument("--device", default=None, help="default: cuda when available")
    args = parser.parse_args(argv)
    quiet_libraries()
    out = args.out or (
        Path(os.environ["OUT"]) if os.environ.get("OUT") else Path(tempfile.mkdtemp(prefix="gpu-check-"))
    )
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    plan = CheckPlan.make(device, args.quick)
    recorder = Recorder(out)
    recorder.result["plan"] = {**{k: v for k, v in asdict(plan).items() if k != "bench"}, "bench": asdict(plan.bench)}
    recorder.section("environment", lambda report: environment(torch.device(device)))
    recorder.section("correctness", lambda report: correctness(plan, report))
    recorder.section("benchmark", lambda report: benchmark(plan, report))
    recorder.result["forbidden_modules_imported"] = [m for m in FORBIDDEN_MODULES if m in sys.modules]
    recorder.result["finished"] = _now()
    recorder.write()
    print(f"gpu_check: wrote {out}/gpu_check.json and gpu_check.md", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
