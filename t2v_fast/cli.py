"""`t2v-fast` command line: user errors print one line and exit 2; bugs keep their traceback."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, cast

from t2v_fast._version import __version__
from t2v_fast.annotators import DEFAULT_DEPTH_MODEL, DEPTH_PRESETS
from t2v_fast.core.choices import BACKENDS, DTYPE_NAMES
from t2v_fast.core.families import all_params, defaults_by_family, task_of_inputs
from t2v_fast.core.params import ParamInfo, ParamRequest, raise_problems, request_problems
from t2v_fast.core.presets import CONTROLNET_PRESETS, PRESETS
from t2v_fast.errors import NumericalError, UserError

if TYPE_CHECKING:
    from t2v_fast.core.input_params import InputVideoParams

EXIT_USER_ERROR = 2
EXIT_NUMERICAL_ERROR = 3


class _Parser(argparse.ArgumentParser):
    """argparse that reports a user error in one line (as every other user error is), not the whole usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _integer(text: str) -> int:
    """An integer; its range is a parameter rule (`t2v_fast.core.params`), checked with every other problem at once."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _positive_int(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _param_help(info: ParamInfo, for_rows: bool) -> str:
    """A parameter's help, from its metadata: whose it is, what it is, its default."""
    owner = f"{info.owner}: " if info.owner else ""
    default = info.default_text(defaults_by_family(info.name))
    if for_rows:
        return f"{owner}{info.help}, for rows that do not set it (default: {default})"
    return f"{owner}{info.help} (default: {default})"


def _add_param_options(parser: argparse.ArgumentParser, for_rows: bool = False) -> None:
    """One option per generation parameter of any family (`t2v_fast.core.families.all_params`); a section's
    (fast mode) in a group of its own in `--help`."""
    groups: dict[str, Any] = {}
    for info in all_params():
        converters: dict[type, Callable[[str], Any]] = {int: _integer, float: float, str: str}
        kind = converters[info.kind]
        if info.section and info.section not in groups:
            groups[info.section] = parser.add_argument_group(info.section)
        target = groups[info.section] if info.section else parser
        help = _param_help(info, for_rows).replace("%", "%%")
        target.add_argument(info.flag, type=kind, choices=info.choices or None, help=help)


def _add_generation_options(parser: argparse.ArgumentParser) -> None:
    _add_param_options(parser)
    parser.add_argument(
        "--seed", type=int, help="seed of the first video; video k uses seed+k (default: random, recorded)"
    )
    parser.add_argument("--negative-prompt", default=None, help="what the video should not show")
    parser.add_argument(
        "--videos-per-prompt", type=_integer, default=1, help="videos with consecutive seeds (default %(default)s)"
    )


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="tiny-random",
        help=f"preset ({', '.join(PRESETS)}), diffusers folder, hub id, or engine directory (t2v-fast export; what"
        " onnxruntime and tensorrt run) (default %(default)s)",
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda if available)")
    parser.add_argument("--dtype", choices=DTYPE_NAMES, help="default: float16 on GPU, float32 on CPU")


def _add_guided_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--controlnet",
        help=f"guided video: a ControlNet beside the model (preset: {', '.join(CONTROLNET_PRESETS)}; a diffusers"
        " ControlNetModel folder; a hub id)",
    )
    parser.add_argument(
        "--depth-model",
        help=f"the depth annotator's model (preset: {', '.join(DEPTH_PRESETS)}; a folder; a hub id; default"
        f" {DEFAULT_DEPTH_MODEL})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="t2v-fast", description="Text-to-video generation with Text2Video-Zero and ModelScope models."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    generate = commands.add_parser("generate", help="generate video(s) from one prompt")
    generate.add_argument("prompt", help="text prompt")
    generate.add_argument(
        "--out", required=True, type=Path, help="output .mp4 (several videos: NAME-0.mp4, NAME-1.mp4, ...)"
    )
    _add_model_options(generate)
    generate.add_argument("--backend", default="torch", choices=BACKENDS, help="default: torch")
    generate.add_argument(
        "--providers", help="comma-separated ONNX Runtime execution providers (default: best available)"
    )
    _add_generation_options(generate)
    _add_guided_options(generate)
    generate.add_argument(
        "--control", type=Path, help="guided video: the video to follow (MP4, WebM, GIF, or a folder of PNG frames)"
    )
    generate.add_argument(
        "--video",
        type=Path,
        help="video editing (an Instruct-Pix2Pix model): the video to edit by the prompt, an instruction (MP4, WebM,"
        " GIF, or a folder of PNG frames)",
    )
    generate.add_argument(
        "--save-control", action="store_true", help="guided video: also write the control maps as NAME.control.mp4"
    )
    generate.add_argument("--compile", action="store_true", help="torch backend: compile the UNet (torch.compile)")
    generate.add_argument(
        "--cuda-graph", action="store_true", help="onnxruntime backend on CUDA: replay the UNet from CUDA graphs"
    )
    generate.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    generate.set_defaults(handler=_generate)

    batch = commands.add_parser("batch", help="render a CSV manifest in this process (no Prefect server needed)")
    batch.add_argument("manifest", type=Path, help="CSV with a 'prompt' column (see README: manifest format)")
    batch.add_argument("--out", required=True, type=Path, help="output folder: <id>.mp4, <id>.json, results.csv")
    _add_model_options(batch)
    _add_guided_options(batch)
    batch.add_argument("--backend", default="torch", choices=BACKENDS, help="default: torch")
    batch.add_argument(
        "--batch-videos", type=_positive_int, default=4, help="videos denoised together at most (default %(default)s)"
    )
    batch.add_argument(
        "--lease-seconds",
        type=float,
        default=60.0,
        help="a row claimed by a run that died is free again after this long (default %(default)s)",
    )
    batch.add_argument(
        "--qc-frozen-mad", type=float, default=0.5, help="QC: below this frame difference (of 255) a video is frozen"
    )
    batch.add_argument(
        "--qc-flicker-ssim", type=float, default=0.3, help="QC: below this frame-to-frame SSIM a video flickers"
    )
    batch.add_argument("--strict", action="store_true", help="exit 1 when any row was rejected")
    _add_param_options(batch, for_rows=True)
    batch.add_argument("--seed", type=int, default=0, help="row N without a seed uses SEED + N - 2 (default 0)")
    batch.set_defaults(handler=_batch)

    # Listed here for --help; its arguments go straight to the harness's own parser (see `main`).
    commands.add_parser("bench", help="benchmark every backend against the reference (t2v-fast bench --help)")

    export = commands.add_parser(
        "export",
        help="export the model's networks to ONNX (text encoder, UNet, VAE decoder; video editing's VAE encoder)",
    )
    export.add_argument("model", help=f"preset ({', '.join(PRESETS)}), diffusers folder or hub id")
    export.add_argument("--out", type=Path, help="engine directory to create (default: engines/<model name>)")
    export.add_argument(
        "--frames",
        type=_positive_int,
        help="example frames per video; the graph stays dynamic (default: the family's length, 8 for Text2Video-Zero,"
        " 16 for ModelScope text-to-video; Instruct-Pix2Pix, whose length is the input video's: its chunk size, 8)",
    )
    export.add_argument("--height", type=_positive_int, help="example height in pixels (default: native size)")
    export.add_argument("--width", type=_positive_int, help="example width in pixels (default: native size)")
    export.add_argument("--videos", type=_positive_int, default=1, help="example videos per UNet batch")
    export.add_argument("--dtype", choices=["fp32", "fp16"], default="fp32", help="exported precision (default fp32)")
    export.add_argument("--opset", type=_positive_int, default=18, help="ONNX opset (default %(default)s)")
    export.add_argument(
        "--optimize-for",
        choices=["onnxruntime-cuda"],
        help="fuse the graphs with ONNX Runtime's optimiser for its CUDA provider (traced in fp32, then converted to"
        " --dtype); such graphs run only there (default: plain ONNX for every runtime)",
    )
    export.add_argument(
        "--fast",
        action="store_true",
        help="also export fast mode's two UNet graphs (DeepCache), for cache_branch 0; they duplicate the UNet's"
        " weights on disk",
    )
    export.add_argument(
        "--controlnet",
        help=f"guided video: also export the ControlNet beside the model, with the UNet in one graph"
        f" (unet_controlnet; preset: {', '.join(CONTROLNET_PRESETS)}; a diffusers ControlNetModel folder; a hub id)",
    )
    export.add_argument(
        "--device",
        default="cpu",
        help="where the model is loaded and traced (default cpu; cuda keeps fp16 off the CPU)",
    )
    export.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    export.set_defaults(handler=_export)

    build = commands.add_parser("build", help="build TensorRT engines from an engine directory's ONNX files")
    build.add_argument("engine_dir", type=Path)
    build.add_argument(
        "--precision",
        choices=["fp16", "fp32"],
        help="the export's, which the ONNX files carry (default)",
    )
    build.add_argument(
        "--static", action="store_true", help="the export's size and frame count only: enables CUDA-graph replay"
    )
    for axis in ("videos", "frames", "height", "width"):
        build.add_argument(f"--{axis}", help=f"{axis} range N or MIN:OPT:MAX (default: around the export's)")
    build.add_argument("--timing-cache", type=Path, help="timing cache to reuse (default: ENGINE_DIR/timing.cache)")
    build.set_defaults(handler=_build)

    check = commands.add_parser("check", help="compare every available backend with PyTorch, per component")
    check.add_argument("engine_dir", type=Path)
    check.add_argument(
        "--tolerance",
        action="append",
        default=[],
        metavar="COMPONENT=REL",
        help="override a component's tolerance on the largest error relative to the reference output's RMS",
    )
    check.set_defaults(handler=_check)

    ui = commands.add_parser("ui", help="web app: text to video, and a review room for each night's output")
    ui.add_argument("--model", action="append", default=[], help="model to offer first (repeatable; default: presets)")
    ui.add_argument("--models-dir", type=Path, help="also offer the diffusers and engine folders found here")
    ui.add_argument("--backend", default="torch", choices=BACKENDS, help="default: torch")
    ui.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda if available)")
    ui.add_argument("--dtype", choices=DTYPE_NAMES, help="default: float16 on GPU, float32 on CPU")
    ui.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s: this machine only)")
    ui.add_argument("--port", type=_positive_int, default=7860, help="default %(default)s")
    ui.add_argument(
        "--out", type=Path, default=Path("outputs"), help="videos and nights live here (default %(default)s)"
    )
    ui.set_defaults(handler=_ui)

    model = commands.add_parser("model", help="model utilities")
    model_commands = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    save = model_commands.add_parser("save", help="write a preset as a diffusers-format folder")
    save.add_argument("preset", choices=[*PRESETS, *CONTROLNET_PRESETS, *DEPTH_PRESETS])
    save.add_argument("folder", type=Path)
    save.set_defaults(handler=_model_save)
    return parser


@contextmanager
def _status(message: str, quiet: bool) -> Iterator[None]:
    """A line on stderr that says what is happening during a silent wait (loading a model), then how long it took."""
    if quiet:
        yield
        return
    print(f"t2v-fast: {message} ...", end="", file=sys.stderr, flush=True)
    started = time.perf_counter()
    try:
        yield
    except BaseException:
        print(" failed", file=sys.stderr)
        raise
    print(f" done in {time.perf_counter() - started:.1f} s", file=sys.stderr)


def _output_paths(out: Path, count: int) -> list[Path]:
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{k}{out.suffix}") for k in range(count)]


def _param_request(args: argparse.Namespace) -> ParamRequest:
    return ParamRequest.of(**{info.name: getattr(args, info.name) for info in all_params()})


def _load_pipeline(args: argparse.Namespace, **options: Any) -> Any:
    """The pipeline of `generate` and `batch`: the model, its ControlNet and depth model, on the chosen backend."""
    from t2v_fast.loading import load_pipeline

    return load_pipeline(
        args.model,
        controlnet=args.controlnet,
        depth_model=args.depth_model,
        backend=args.backend,
        device=args.device,
        dtype=args.dtype,
        **options,
    )


def _generate(args: argparse.Namespace) -> int:
    from t2v_fast.core.video import check_writable

    given = {"seed": args.seed} if args.seed is not None else {}
    problems = request_problems(prompt=args.prompt, videos_per_prompt=args.videos_per_prompt, **given)
    raise_problems(problems)
    paths = _output_paths(args.out, args.videos_per_prompt)
    for path in paths:
        check_writable(path)
    source = args.model
    from t2v_fast.loading import describe_model

    # Every rule that needs only the model's configs is checked before its weights load (minutes for a large model).
    inputs = {"control": args.control, "video": args.video}
    task = task_of_inputs(inputs)
    card = describe_model(source, controlnet=args.controlnet)
    if args.control is not None and not card.controlnet:
        from t2v_fast.core.engine_dir import EngineDir

        if EngineDir.is_engine_dir(source):  # an export without a ControlNet: say how to make one with it
            EngineDir.load(source, verify_hashes=False).check_guided()
    settings, problems = card.check(_param_request(args), task)
    raise_problems(problems)
    if task.name not in card.tasks:
        raise UserError(f"{task.title} needs a ControlNet: give one with --controlnet")
    from t2v_fast.core.input_params import INPUT_TITLES, probe_input

    for name, given in inputs.items():
        if given is not None:
            probe_input(given, cast("InputVideoParams", settings), INPUT_TITLES[name])
    with _status(f"loading {source} ({args.backend} backend)", quiet=args.quiet):
        pipeline = _load_pipeline(
            args,
            providers=args.providers.split(",") if args.providers else None,
            compile_unet=args.compile,
            cuda_graph=args.cuda_graph,
        )
    videos = pipeline.generate(
        args.prompt,
        negative_prompt=args.negative_prompt,
        seed=args.seed,
        videos_per_prompt=args.videos_per_prompt,
        progress=not args.quiet,
        control=args.control,
        video=args.video,
        **_param_request(args).values,
    )
    for video, path in zip(videos, paths, strict=True):
        video.save(path, save_control=args.save_control)
        if not args.quiet:
            frames, height, width, _ = video.frames.shape
            seed = video.metadata["seed"]
            print(f"wrote {path} ({frames} frames, {width}x{height}, seed {seed}) and {path.with_suffix('.json')}")
    return 0


def _batch(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from t2v_fast.bulk.claims import Claims
    from t2v_fast.bulk.manifest import parse_manifest
    from t2v_fast.bulk.qc import QcThresholds
    from t2v_fast.bulk.rendering import (
        count_statuses,
        qc_summary,
        rejection_lines,
        render_rows,
        rendered_elsewhere,
        split_done,
        write_reports,
    )
    from t2v_fast.core.video import prepare_output_folder
    from t2v_fast.loading import describe_model

    source = args.model
    card = describe_model(source, controlnet=args.controlnet)
    parsed = parse_manifest(args.manifest, _param_request(args), card, args.seed, args.depth_model)
    prepare_output_folder(args.out)
    for warning in parsed.warnings:
        print(f"t2v-fast: warning: {warning}", file=sys.stderr)
    thresholds = QcThresholds(args.qc_frozen_mad, args.qc_flicker_ssim)
    todo, results = split_done(parsed.rows, args.out, card.model_id, card.weights_sha256, thresholds)
    print(
        f"{parsed.total_rows} rows: {len(todo)} to render, {len(results)} already done, {len(parsed.rejected)} rejected"
    )
    if todo:
        with _status(f"loading {source} ({args.backend} backend)", quiet=False):
            pipeline = _load_pipeline(args)
        claims = Claims(args.out, run=f"t2v-fast batch (pid {os.getpid()})", lease_seconds=args.lease_seconds)
        try:
            with tqdm(total=len(todo), desc="rendering", unit="row") as bar:
                results += render_rows(
                    pipeline,
                    todo,
                    args.out,
                    max_batch_videos=args.batch_videos,
                    on_result=lambda _: bar.update(),
                    claims=claims,
                    qc_thresholds=thresholds,
                )
        finally:
            claims.close()
    write_reports(args.out, parsed, results)
    counts = count_statuses(parsed, results)
    print(f"\n{'status':<10} rows")
    for status, count in counts.items():
        print(f"{status:<10} {count}")
    if elsewhere := rendered_elsewhere(results):
        print(f"({elsewhere} of the skipped rows were rendered by another run working at the same time)")
    print(qc_summary(results))
    for line in rejection_lines(parsed, args.out):
        print(line)
    print(f"details: {args.out / 'results.csv'}, {args.out / 'rejected.csv'}")
    return 1 if counts["failed"] or (args.strict and counts["rejected"]) else 0


def _export(args: argparse.Namespace) -> int:
    from export import ExportSettings, export_model

    settings = ExportSettings(
        args.frames, args.height, args.width, args.videos, args.dtype, args.opset, args.optimize_for, args.fast
    )
    out = args.out or Path("engines") / Path(args.model.rstrip("/")).name
    engine_dir = export_model(
        args.model, out, settings, progress=not args.quiet, device=args.device, controlnet=args.controlnet
    )
    if not args.quiet:
        for name in engine_dir.networks:
            record = engine_dir.component(name)
            print(f"{name}: {record.file} ({record.bytes / 2**20:.1f} MiB, {record.export_seconds} s)")
        print(f"wrote {out / 'engine.json'}")
    return 0


def _build(args: argparse.Namespace) -> int:
    from export.tensorrt_build import build_engines
    from t2v_fast.backends.tensorrt import import_tensorrt
    from t2v_fast.core.engine_dir import EngineDir
    from t2v_fast.core.profiles import AXES, AxisRange, default_ranges

    engine_dir = EngineDir.load(args.engine_dir)
    engine_dir.check_runs_on("tensorrt")
    import_tensorrt()
    given = {axis: AxisRange.parse(text, axis) for axis in AXES if (text := getattr(args, axis))}
    build_engines(engine_dir, default_ranges(engine_dir, args.static, given), args.precision, args.timing_cache)
    return 0


def _check(args: argparse.Namespace) -> int:
    from t2v_fast.backends.check import check_engine_dir, format_report

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


def _ui(args: argparse.Namespace) -> int:
    try:
        from t2v_fast.app import serve
    except ImportError as error:
        raise UserError(f"the web app needs Gradio ({error.name} is missing): pip install 't2v-fast[ui]'") from None
    models = args.model
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"t2v-fast: web app on http://{args.host}:{args.port} (Ctrl+C stops it)", file=sys.stderr)
    serve(models, args.backend, args.device, args.dtype, args.models_dir, args.out, args.host, args.port)
    return 0


NETWORK_MODULES = ("text_encoder", "unet", "vae")


def _model_save(args: argparse.Namespace) -> int:
    from t2v_fast.core.models import load_components, save_components

    if args.folder.exists() and any(args.folder.iterdir()):
        raise UserError(f"folder {str(args.folder)!r} exists and is not empty")
    if args.preset in DEPTH_PRESETS:
        from t2v_fast.annotators import save_depth_estimator

        save_depth_estimator(args.preset, args.folder)
        print(f"wrote {args.preset} (depth estimator, DPTForDepthEstimation) to {args.folder}")
        return 0
    if args.preset in CONTROLNET_PRESETS:
        from t2v_fast.families.guided.controlnet import build_preset_controlnet

        controlnet = build_preset_controlnet(args.preset)
        controlnet.save_pretrained(args.folder)
        count = sum(p.numel() for p in controlnet.parameters())
        print(f"wrote {args.preset} (ControlNetModel; parameters: {count / 1e6:,.1f} M) to {args.folder}")
        return 0
    components = load_components(args.preset, device="cpu", dtype="float32")
    save_components(components, args.folder)
    counts = {name: sum(p.numel() for p in getattr(components, name).parameters()) for name in NETWORK_MODULES}
    sizes = ", ".join(f"{name} {count / 1e6:,.1f} M" for name, count in counts.items())
    print(f"wrote {args.preset} ({components.card.family_record.title}; parameters: {sizes}) to {args.folder}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        from benchmarks.cli import main as bench

        return bench(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="t2v-fast: %(levelname)s: %(message)s")
    from t2v_fast.quiet import quiet_libraries

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
