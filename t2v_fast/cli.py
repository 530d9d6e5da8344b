"""`t2v-fast` command line: user errors print one line and exit 2; bugs keep their traceback."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__
from .errors import NumericalError, UserError
from .params import GenerationParams
from .presets import PRESETS

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
    parser.add_argument("--height", type=_positive_int, help="pixels, multiple of 8 (default: the model's native size)")
    parser.add_argument("--width", type=_positive_int, help="pixels, multiple of 8 (default: the model's native size)")
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
    generate.add_argument("--backend", default="torch", help="torch (default)")
    _add_generation_options(generate)
    generate.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    generate.set_defaults(handler=_generate)

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
    pipeline = load_pipeline(args.model, backend=args.backend, device=args.device, dtype=args.dtype)
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


def _model_save(args: argparse.Namespace) -> int:
    from .models import load_components, save_components

    if args.folder.exists() and any(args.folder.iterdir()):
        raise UserError(f"folder {str(args.folder)!r} exists and is not empty")
    save_components(load_components(args.preset, device="cpu", dtype="float32"), args.folder)
    print(f"wrote {args.preset} to {args.folder}")
    return 0


def _quiet_libraries() -> None:
    """Keep library chatter (weight-loading bars, dtype notes) out of our output; our own warnings still show."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="t2v-fast: %(levelname)s: %(message)s")
    _quiet_libraries()
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
