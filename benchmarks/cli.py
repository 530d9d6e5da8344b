"""`t2v-fast bench` arguments: parsed before torch is imported, so `--help` and argument errors answer at once."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from . import BACKENDS, DEFAULT_SECTIONS, RESULTS_ROOT, SECTIONS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="t2v-fast bench", description="Latency, memory and FLOPs of every backend against the reference."
    )
    parser.add_argument(
        "--preset",
        help="tiny-random, small-random (default), sd15-random, modelscope-tiny-random or modelscope-random;"
        " the reference contender is the preset family's diffusers pipeline",
    )
    parser.add_argument("--frames", type=int, help="default: the model family's (8 Text2Video-Zero, 16 ModelScope)")
    parser.add_argument("--height", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--videos", type=int, help="videos per batch")
    parser.add_argument("--device")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--backends", help=f"comma-separated subset of {','.join(BACKENDS)}")
    parser.add_argument("--sweep-frames", help="frame counts of the memory sweep, e.g. 8,16,32,64")
    parser.add_argument("--fast-intervals", help="cache intervals of the fast section beside exact (default 2,3,5)")
    parser.add_argument(
        "--sections",
        help=f"comma-separated subset of {','.join(SECTIONS)} (default: {','.join(DEFAULT_SECTIONS)}), e.g."
        " memory_sweep alone; guided races guided video (ControlNet) against its reference recipe, edit video editing"
        " (Instruct-Pix2Pix)",
    )
    parser.add_argument(
        "--onnx-engines",
        help="an existing export of the preset with fast mode's graphs (t2v-fast export PRESET --fast) for the"
        " onnxruntime contender, instead of exporting in the run (its export time is then not measured)",
    )
    parser.add_argument(
        "--guided-engines",
        help="an existing export of the preset with its ControlNet (t2v-fast export PRESET --controlnet CONTROLNET)"
        " for the guided section's onnxruntime contender (default: --onnx-engines when it has unet_controlnet, else"
        " exported in the run)",
    )
    parser.add_argument(
        "--edit-engines",
        help="an existing export of the edit section's Instruct-Pix2Pix preset (pix2pix-tiny-random for tiny-random,"
        " pix2pix-random for sd15-random: t2v-fast export PRESET) for its onnxruntime contender (default: exported"
        " in the run)",
    )
    parser.add_argument("--quick", action="store_true", help="seconds on a CPU, for CI: checks the harness, not speed")
    parser.add_argument(
        "--out",
        type=Path,
        help=f"results root (default {RESULTS_ROOT}, outside the source tree; benchmarks/results holds committed"
        " ones); a run writes a new DEVICE-DATE folder there and never overwrites one",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    unknown = sorted(set(args.sections.split(",")) - set(SECTIONS)) if args.sections else []
    if unknown:
        parser.error(f"unknown benchmark sections {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    given_exports = {
        "--onnx-engines": args.onnx_engines,
        "--guided-engines": args.guided_engines,
        "--edit-engines": args.edit_engines,
    }
    for flag, given in given_exports.items():
        if given and not (Path(given) / "engine.json").is_file():
            parser.error(f"{flag} {given}: not an engine directory (no engine.json)")
    overrides: dict[str, Any] = {
        k: v
        for k, v in vars(args).items()
        if v is not None and k not in ("quick", "backends", "sweep_frames", "fast_intervals", "sections", "out")
    }
    if args.backends:
        overrides["backends"] = tuple(args.backends.split(","))
    if args.sections:
        overrides["sections"] = tuple(args.sections.split(","))
    if args.sweep_frames:
        overrides["sweep_frames"] = tuple(int(v) for v in args.sweep_frames.split(","))
    if args.fast_intervals:
        overrides["fast_intervals"] = tuple(int(v) for v in args.fast_intervals.split(","))
    if args.out:
        overrides["out_root"] = args.out
    from .harness import BenchConfig, run_and_report

    config = BenchConfig.quick_config(**overrides) if args.quick else BenchConfig(**overrides)
    folder = run_and_report(config)
    print(f"wrote {folder}/results.json, results.md, chart.png")
    return 0
