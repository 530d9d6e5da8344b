"""`t2v-fast` command line: user errors print one line and exit 2; bugs keep their traceback."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__
from .errors import NumericalError, UserError
from .params import GenerationParams
from .presets import PRESETS
from .quiet import quiet_libraries
from .runtime import BACKENDS

EXIT_USER_ERROR = 2
EXIT_NUMERICAL_ERROR = 3


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _add_generation_options(parser: argparse.ArgumentParser) -> None:
    defaults = GenerationParams()
    parser.add_argument(
        "--frames", type=_positive_int, default=defaults.frames, help="frames per video (default %(default)s)"
    )
    parser.add_argument("--steps", type=_positive_int, default=defaults.steps, help="DDIM steps (default %(default)s)")
    parser.add_argument(
        "--guidance", type=float, default=defaults.guidance, help="classifier-free guidance scale (default %(default)s)"
    )
    parser.add_argument(
        "--height",
        type=_positive_int,
        help="pixels, a multiple of the model's size step (64 for SD 1.5; default: native size)",
    )
    parser.add_argument(
        "--width",
        type=_positive_int,
        help="pixels, a multiple of the model's size step (64 for SD 1.5; default: native size)",
    )
    parser.add_argument(
        "--seed", type=int, help="seed of the first video; video k uses seed+k (default: random, recorded)"
    )
    parser.add_argument(
        "--motion-x",
        type=float,
        default=defaults.motion_x,
        help="horizontal motion per frame, in 1/512 of the width (default %(default)s)",
    )
    parser.add_argument(
        "--motion-y",
        type=float,
        default=defaults.motion_y,
        help="vertical motion per frame, in 1/512 of the height (default %(default)s)",
    )
    parser.add_argument(
        "--t0", type=int, help="motion start step, counted from the end (default: 44 of 50 steps, scaled)"
    )
    parser.add_argument(
        "--t1", type=int, help="re-noising step, counted from the end (default: 47 of 50 steps, scaled)"
    )
    parser.add_argument("--negative-prompt", default=None, help="what the video should not show")
    parser.add_argument(
        "--videos-per-prompt", type=_positive_int, default=1, help="videos with consecutive seeds (default %(default)s)"
    )
    parser.add_argument("--chunk-size", type=int, help="frames per UNet pass for long videos, anchor included (>= 2)")
    parser.add_argument(
        "--fps", type=float, default=defaults.fps, help="frames per second of the MP4 (default %(default)s)"
    )


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="tiny-random",
        help=f"preset ({', '.join(PRESETS)}), diffusers folder or hub id (default %(default)s)",
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda if available)")
    parser.add_argument(
        "--dtype", choices=["float32", "float16", "bfloat16"], help="default: float16 on GPU, float32 on CPU"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t2v-fast", description="Text2Video-Zero video generation.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    generate = commands.add_parser("generate", help="generate video(s) from one prompt")
    generate.add_argument("prompt", help="text prompt")
    generate.add_argument(
        "--out", required=True, type=Path, help="output .mp4 (several videos: NAME-0.mp4, NAME-1.mp4, ...)"
    )
    _add_model_options(generate)
    generate.add_argument("--backend", default="torch", choices=BACKENDS, help="default: torch")
    generate.add_argument("--engines", type=Path, help="engine directory (t2v-fast export) for onnxruntime/tensorrt")
    generate.add_argument(
        "--providers", help="comma-separated ONNX Runtime execution providers (default: best available)"
    )
    _add_generation_options(generate)
    generate.add_argument("--compile", action="store_true", help="torch backend: compile the UNet (torch.compile)")
    generate.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    generate.set_defaults(handler=_generate)

    batch = commands.add_parser("batch", help="render a CSV manifest with the Prefect flows, in this process")
    batch.add_argument("manifest", type=Path, help="CSV with a 'prompt' column (see README: manifest format)")
    batch.add_argument("--out", required=True, type=Path, help="output folder: <id>.mp4, <id>.json, results.csv")
    _add_model_options(batch)
    batch.add_argument("--backend", default="torch", choices=BACKENDS, help="default: torch")
    batch.add_argument("--engines", type=Path, help="engine directory for onnxruntime/tensorrt")
    batch.add_argument("--shard-size", type=_positive_int, default=16, help="rows per shard (default %(default)s)")
    batch.add_argument("--strict", action="store_true", help="exit 1 when any row was rejected")
    for name in ("frames", "steps", "height", "width"):
        batch.add_argument(f"--{name}", type=_positive_int, help=f"default {name} for rows that do not set it")
    batch.add_argument("--guidance", type=float, help="default guidance for rows that do not set it")
    batch.add_argument("--fps", type=float, help="default fps for rows that do not set it")
    batch.add_argument("--seed", type=int, default=0, help="row N without a seed uses SEED + N - 2 (default 0)")
    batch.set_defaults(handler=_batch)

    # Listed here for --help; its arguments go straight to the harness's own parser (see `main`).
    commands.add_parser("bench", help="benchmark every backend against the reference (t2v-fast bench --help)")

    export = commands.add_parser("export", help="export text encoder, UNet and VAE decoder to ONNX")
    export.add_argument("model", help=f"preset ({', '.join(PRESETS)}), diffusers folder or hub id")
    export.add_argument("--out", type=Path, help="engine directory to create (default: engines/<model name>)")
    export.add_argument(
        "--frames", type=_positive_int, default=8, help="example frames per video (graph stays dynamic)"
    )
    export.add_argument("--height", type=_positive_int, help="example height in pixels (default: native size)")
    export.add_argument("--width", type=_positive_int, help="example width in pixels (default: native size)")
    export.add_argument("--videos", type=_positive_int, default=1, help="example videos per UNet batch")
    export.add_argument("--dtype", choices=["fp32", "fp16"], default="fp32", help="exported precision (default fp32)")
    export.add_argument("--opset", type=_positive_int, default=18, help="ONNX opset (default %(default)s)")
    export.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    export.set_defaults(handler=_export)

    build = commands.add_parser("build", help="build TensorRT engines from an engine directory's ONNX files")
    build.add_argument("engine_dir", type=Path)
    build.add_argument("--precision", choices=["fp16", "bf16", "fp32"], default="fp16", help="default %(default)s")
    build.add_argument("--static", action="store_true", help="one shape (the export's): enables CUDA-graph replay")
    for axis in ("videos", "frames", "height", "width"):
        build.add_argument(f"--{axis}", help=f"{axis} range N or MIN:OPT:MAX (default: around the export's)")
    build.add_argument("--timing-cache", type=Path, help="timing cache to reuse (default: ENGINE_DIR/timing.cache)")
    build.set_defaults(handler=_build)

    check = commands.add_parser("check", help="compare every available backend with PyTorch, per component")
    check.add_argument("engine_dir", type=Path)
    check.add_argument(
        "--tolerance", action="append", default=[], metavar="COMPONENT=ATOL", help="override a component's tolerance"
    )
    check.set_defaults(handler=_check)

    model = commands.add_parser("model", help="model utilities")
    model_commands = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    save = model_commands.add_parser("save", help="write a preset as a diffusers-format folder")
    save.add_argument("preset", choices=list(PRESETS))
    save.add_argument("folder", type=Path)
    save.set_defaults(handler=_model_save)
    return parser


def _output_paths(out: Path, count: int) -> list[Path]:
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{k}{out.suffix}") for k in range(count)]


def _generate(args: argparse.Namespace) -> int:
    from .pipeline import load_pipeline
    from .video import check_writable

    paths = _output_paths(args.out, args.videos_per_prompt)
    for path in paths:
        check_writable(path)
    source = str(args.engines) if args.engines else args.model
    providers = args.providers.split(",") if args.providers else None
    pipeline = load_pipeline(
        source,
        backend=args.backend,
        device=args.device,
        dtype=args.dtype,
        providers=providers,
        compile_unet=args.compile,
    )
    result = pipeline.generate(
        args.prompt,
        negative_prompt=args.negative_prompt,
        seed=args.seed,
        videos_per_prompt=args.videos_per_prompt,
        progress=not args.quiet,
        frames=args.frames,
        steps=args.steps,
        guidance=args.guidance,
        height=args.height,
        width=args.width,
        motion_x=args.motion_x,
        motion_y=args.motion_y,
        t0=args.t0,
        t1=args.t1,
        chunk_size=args.chunk_size,
        fps=args.fps,
    )
    videos = result if isinstance(result, list) else [result]
    for video, path in zip(videos, paths, strict=True):
        video.save(path)
        if not args.quiet:
            frames, height, width, _ = video.frames.shape
            seed = video.metadata["seed"]
            print(f"wrote {path} ({frames} frames, {width}x{height}, seed {seed}) and {path.with_suffix('.json')}")
    return 0


def _batch(args: argparse.Namespace) -> int:
    from .manifest import read_records

    read_records(args.manifest)  # a file-level problem is a one-line error before Prefect starts
    # The temporary local server's telemetry write races its own start-up on SQLite ("database is locked").
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows.nightly import nightly

    names = ("frames", "steps", "height", "width", "guidance", "fps")
    defaults = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    counts = nightly(
        manifest=str(args.manifest),
        out_dir=str(args.out),
        model=args.model,
        backend=args.backend,
        engines=str(args.engines) if args.engines else None,
        device=args.device,
        dtype=args.dtype,
        shard_size=args.shard_size,
        defaults=defaults,
        base_seed=args.seed,
    )
    print(f"\n{'status':<10} rows")
    for status, count in counts.items():
        print(f"{status:<10} {count}")
    print(f"details: {args.out / 'results.csv'}, {args.out / 'rejected.csv'}")
    return 1 if counts["failed"] or (args.strict and counts["rejected"]) else 0


def _export(args: argparse.Namespace) -> int:
    from .export import ExportSettings, export_model

    settings = ExportSettings(args.frames, args.height, args.width, args.videos, args.dtype, args.opset)
    out = args.out or Path("engines") / Path(args.model.rstrip("/")).name
    engine_dir = export_model(args.model, out, settings, progress=not args.quiet)
    if not args.quiet:
        for name, entry in engine_dir.manifest["components"].items():
            size = entry["bytes"] / 2**20
            print(f"{name}: {entry['file']} ({size:.1f} MiB, {entry['export_seconds']} s)")
        print(f"wrote {out / 'engine.json'}")
    return 0


def _build(args: argparse.Namespace) -> int:
    from .engine_dir import EngineDir
    from .tensorrt_backend import AxisRange, BuildRanges, build_engines, import_tensorrt

    import_tensorrt()
    engine_dir = EngineDir.load(args.engine_dir)
    export = engine_dir.manifest["export"]
    native = engine_dir.model_info["native_size"]
    exported = {"videos": export["videos"], "frames": export["frames"]}
    exported |= {"height": export["height"] or native, "width": export["width"] or native}
    dynamic_defaults = {
        "videos": f"1:{exported['videos']}:{max(exported['videos'], 4)}",
        "frames": f"2:{exported['frames']}:{max(exported['frames'], 24)}",
    }
    ranges = {}
    for axis, value in exported.items():
        text = getattr(args, axis) or (str(value) if args.static else dynamic_defaults.get(axis, str(value)))
        ranges[axis] = AxisRange.parse(text, axis)
    build_engines(engine_dir, BuildRanges(**ranges), args.precision, args.timing_cache)
    return 0


def _check(args: argparse.Namespace) -> int:
    from .check import check_engine_dir, format_report

    tolerances = {}
    for item in args.tolerance:
        name, _, value = item.partition("=")
        try:
            tolerances[name] = float(value)
        except ValueError:
            raise UserError(f"--tolerance expects COMPONENT=NUMBER, got {item!r}") from None
    results, skipped = check_engine_dir(str(args.engine_dir), tolerances)
    print(format_report(results, skipped))
    return 0 if all(r.passed for r in results) else 1


def _model_save(args: argparse.Namespace) -> int:
    from .models import load_components, save_components

    if args.folder.exists() and any(args.folder.iterdir()):
        raise UserError(f"folder {str(args.folder)!r} exists and is not empty")
    save_components(load_components(args.preset, device="cpu", dtype="float32"), args.folder)
    print(f"wrote {args.preset} to {args.folder}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        from benchmarks.harness import main as bench

        return bench(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="t2v-fast: %(levelname)s: %(message)s")
    quiet_libraries()
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except UserError as error:
        print(f"t2v-fast: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except NumericalError as error:
        print(f"t2v-fast: error: {error}", file=sys.stderr)
        return EXIT_NUMERICAL_ERROR
    except KeyboardInterrupt:
        print("t2v-fast: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
