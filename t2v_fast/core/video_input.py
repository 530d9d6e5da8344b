"""Input videos for the modes that start from one (guided video, video editing): read, cut, resample, resize, hash.

Sources are an MP4/WebM/MOV/MKV file (decoded by imageio-ffmpeg's bundled ffmpeg), a GIF (Pillow: its own frame
durations), a folder of PNG frames or a uint8 array `(F, H, W, 3)`; the last two carry no time base, so they are taken
to play at `sequence_fps`. Every problem with the input is one `UserError` line naming the source and what is wrong,
before any model work. `sha256` is the source's content hash (not of the options): it goes into sidecars and the
"already rendered" check, next to the options themselves.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from t2v_fast.errors import UserError

# Frame sizes are multiples of the VAE's scale (8), and at least two latent pixels (16 px) on each side.
SIZE_MULTIPLE = 8
MIN_SIDE = 2 * SIZE_MULTIPLE
# A PNG folder or an array has no frame rate of its own; ModelScope's default rate.
DEFAULT_SEQUENCE_FPS = 8.0
# Decoded by ffmpeg; a GIF goes to Pillow instead, which gives each frame's own duration.
FFMPEG_SUFFIXES = (".mp4", ".m4v", ".mov", ".webm", ".mkv")
# Browsers show a GIF frame of 0 or 10 ms (or without a duration) for 100 ms; so do we.
GIF_DEFAULT_DURATION_MS = 100
# Tolerance, in source frames, for times that land on a frame boundary up to floating-point error (k/3 * 3).
_EPS = 1e-6


@dataclass(frozen=True)
class InputVideo:
    """`frames`: uint8 RGB `(F, H, W, 3)`, H and W multiples of 8; `fps`: the rate the frames are to be played at;
    `source`: the path (or a description of an array); `sha256`: the content hash of the source."""

    frames: np.ndarray
    fps: float
    source: str
    sha256: str


@dataclass(frozen=True)
class VideoFacts:
    """What a header says, for checking a manifest without decoding: `frames_estimate` and `duration` (seconds) are
    None when the header does not say; `width` and `height` are the source's, before any resize."""

    width: int
    height: int
    fps: float
    duration: float | None
    frames_estimate: int | None


@dataclass
class _Source:
    """One opened source: its size, its nominal rate, and when each frame starts being shown."""

    name: str  # for messages: "input video 'clip.mp4'"
    width: int
    height: int
    fps: float  # nominal: the output rate when none is asked for
    frames: Iterator[tuple[int, Callable[[], np.ndarray]]]  # (index, decode) in order; decode only if used
    index_at: Callable[[float], int]  # the frame shown at a time (seconds): the last one started by then
    duration: float | None  # seconds, when known before decoding (None for ffmpeg: counted while reading)
    close: Callable[[], None] = lambda: None


def load_video(
    source: str | Path | np.ndarray,
    *,
    start: float = 0.0,
    end: float | None = None,
    fps: float | None = None,
    max_frames: int | None = None,
    resolution: int | None = None,
    sequence_fps: float = DEFAULT_SEQUENCE_FPS,
) -> InputVideo:
    """Read an input video, cut to `[start, end)` seconds, resampled to `fps`, resized; refuse bad input clearly.

    Time rule: output frame k is the source frame shown at time `start + k / fps` (the last source frame that started
    at or before it: nearest-earlier, never a later one), for every k with that time before `end` (default: the end of
    the video); so a cut of `end - start` seconds gives `ceil((end - start) * fps)` frames when the video is long
    enough. Without `fps` the source's own rate is kept (for a constant-rate source: its frames unchanged). A PNG
    folder (frames sorted by name, digit runs by value) and an array play at `sequence_fps`, so for them `start` and
    `end` count `sequence_fps` frames a second.

    Size rule: the longer side becomes `resolution` (the aspect ratio kept; without `resolution` it stays as it is),
    then each side is rounded to the nearest multiple of 8 (halves up), with Lanczos resampling when that changes the
    size. A side below 16 px, in the source or once scaled, is refused rather than stretched.

    `max_frames` is a cap, not a cut: more frames than that is an error saying how many, so that the user chooses
    between an earlier `end` and a lower `fps`.
    """
    _check_options(start, end, fps, max_frames, resolution, sequence_fps)
    opened = _open(source, sequence_fps)
    try:
        size = _target_size(opened, resolution)
        frames = _select(opened, start, end, fps or opened.fps, max_frames, size)
    finally:
        opened.close()
    return InputVideo(
        frames=frames, fps=float(fps or opened.fps), source=_describe(source), sha256=content_sha256(source)
    )


def probe_video(path: str | Path, *, sequence_fps: float = DEFAULT_SEQUENCE_FPS) -> VideoFacts:
    """Size, rate and length from the header (ffmpeg's metadata; Pillow's for a GIF or the first PNG), without
    decoding the video: cheap enough to check every row of a manifest. Missing files and non-videos raise the same
    `UserError`s as `load_video`."""
    _check_positive("sequence_fps", sequence_fps)
    path = Path(path)
    name = _name(path)
    kind = _kind(path)
    if kind == "png":
        files = _png_files(path)
        width, height = _png_size(files[0], name)
        return VideoFacts(width, height, sequence_fps, len(files) / sequence_fps, len(files))
    if kind == "gif":
        with _open_gif(path, name) as image:
            width, height = image.size
            rate = 1000.0 / _gif_duration_ms(image)
            try:
                count = getattr(image, "n_frames", 1)
            except (OSError, EOFError):
                raise UserError(f"{name} is a damaged GIF") from None
        return VideoFacts(width, height, rate, count / rate, count)
    reader, meta = _open_ffmpeg(path, name)
    reader.close()
    width, height = meta["size"]
    duration = meta.get("duration") or None
    estimate = round(duration * meta["fps"]) if duration else None
    return VideoFacts(int(width), int(height), float(meta["fps"]), duration, estimate)


def resized_size(width: int, height: int, resolution: int | None) -> tuple[int, int]:
    """The size rule of `load_video` on its own: the longer side to `resolution`, then each side to the nearest
    multiple of 8 (halves up). Raises `ValueError` when a side, scaled, is below 16 px."""
    scale = 1.0 if resolution is None else resolution / max(width, height)
    scaled = (width * scale, height * scale)
    if min(scaled) < MIN_SIDE:
        raise ValueError(f"{min(scaled):.4g} px")
    rounded = (math.floor(side / SIZE_MULTIPLE + 0.5) * SIZE_MULTIPLE for side in scaled)
    new_width, new_height = rounded
    return new_width, new_height


# Options and sizes.


def _check_options(
    start: float,
    end: float | None,
    fps: float | None,
    max_frames: int | None,
    resolution: int | None,
    sequence_fps: float,
) -> None:
    if not math.isfinite(start) or start < 0:
        raise UserError(f"input video start must be a number of seconds >= 0, got {start}")
    if end is not None:
        if not math.isfinite(end):
            raise UserError(f"input video end must be a finite number of seconds, got {end}")
        if start >= end:
            raise UserError(f"input video start ({start} s) must be before its end ({end} s)")
    if fps is not None:
        _check_positive("fps", fps)
    _check_positive("sequence_fps", sequence_fps)
    if max_frames is not None and (isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1):
        raise UserError(f"input video max_frames must be a whole number >= 1, got {max_frames!r}")
    if resolution is not None and (
        isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < MIN_SIDE
    ):
        raise UserError(f"input video resolution must be a whole number of pixels >= {MIN_SIDE}, got {resolution!r}")


def _check_positive(option: str, value: float) -> None:
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"input video {option} must be a number > 0, got {value}")


def _target_size(opened: _Source, resolution: int | None) -> tuple[int, int]:
    width, height = opened.width, opened.height
    if min(width, height) < MIN_SIDE:
        raise UserError(f"{opened.name} is {width}x{height}, below the minimum of {MIN_SIDE} px on each side")
    try:
        return resized_size(width, height, resolution)
    except ValueError as error:
        raise UserError(
            f"{opened.name} is {width}x{height}: its shorter side at resolution {resolution} would be {error}, "
            f"below the minimum of {MIN_SIDE} px; use a larger resolution"
        ) from None


def resize_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A frame at `size` (width, height), Lanczos-resampled when that changes it (the size rule's resampling)."""
    if (frame.shape[1], frame.shape[0]) == size:
        return frame
    return np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.LANCZOS))


# Picking frames.


def _select(
    opened: _Source, start: float, end: float | None, rate: float, cap: int | None, size: tuple[int, int]
) -> np.ndarray:
    """Walk the source once, in order, decoding only the frames some output time shows; stop after `end`.

    Past the cap, frames are counted but not kept, so the error can say how many the cut gives."""
    if opened.duration is not None:  # known: the cut ends there at the latest (ffmpeg's stream just ends)
        end = opened.duration if end is None else min(end, opened.duration)
    kept: list[np.ndarray] = []
    count = 0

    def time_of(k: int) -> float:
        return start + k / rate

    def done(k: int) -> bool:
        return end is not None and time_of(k) >= end - 1e-9

    target = opened.index_at(start)
    seen = 0  # source frames read
    for index, decode in opened.frames if not done(0) else ():
        seen = index + 1
        if index < target:
            continue
        frame = resize_frame(decode(), size) if cap is None or count < cap else None
        while target == index:
            if frame is not None and (cap is None or count < cap):
                kept.append(frame)
            count += 1
            target = opened.index_at(time_of(count))
            if done(count):
                break
        if done(count):
            break
    if count == 0:
        duration = opened.duration if opened.duration is not None else seen / opened.fps
        if seen == 0 and opened.duration is None:
            raise UserError(f"{opened.name} has no frames")
        raise UserError(
            f"{opened.name}: the cut starting at {start:g} s gives no frames: the video is {duration:.3g} s long"
        )
    if cap is not None and count > cap:
        raise UserError(
            f"{opened.name}: the cut gives {count} frames, more than max_frames={cap}; "
            f"set an earlier end or a lower fps (now {rate:g})"
        )
    return np.stack(kept)


def _constant_rate(fps: float) -> Callable[[float], int]:
    return lambda time: max(0, math.floor(time * fps + _EPS))


# Opening each kind of source.


def _open(source: str | Path | np.ndarray, sequence_fps: float) -> _Source:
    if isinstance(source, np.ndarray):
        return _open_array(source, sequence_fps)
    if not isinstance(source, str | Path):
        raise UserError(f"input video must be a path or a uint8 array (F, H, W, 3), got {type(source).__name__}")
    path = Path(source)
    name = _name(path)
    kind = _kind(path)
    if kind == "png":
        return _open_pngs(_png_files(path), name, sequence_fps)
    if kind == "gif":
        return _open_gif_frames(path, name)
    return _open_ffmpeg_frames(path, name)


def _name(path: Path) -> str:
    return f"input video {str(path)!r}"


def _kind(path: Path) -> str:
    """'png' (a folder), 'gif' or 'ffmpeg'; a missing path or an unsupported suffix is the user's mistake."""
    if not path.exists():
        raise UserError(f"{_name(path)} does not exist")
    if path.is_dir():
        return "png"
    suffix = path.suffix.lower()
    if suffix == ".gif":
        return "gif"
    if suffix in FFMPEG_SUFFIXES:
        return "ffmpeg"
    supported = ", ".join(s[1:] for s in (*FFMPEG_SUFFIXES, ".gif"))
    raise UserError(f"{_name(path)} is not a supported video ({supported}, or a folder of PNG frames)")


def _describe(source: str | Path | np.ndarray) -> str:
    if isinstance(source, np.ndarray):
        return f"array {tuple(source.shape)}"
    return str(source)


def _check_array(frames: np.ndarray) -> None:
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
        raise UserError(
            f"input video array must be uint8 (F, H, W, 3) RGB, got {frames.dtype} with shape {tuple(frames.shape)}"
        )
    if frames.shape[0] == 0:
        raise UserError("input video array has no frames")


def _open_array(frames: np.ndarray, fps: float) -> _Source:
    _check_array(frames)
    count, height, width, _ = frames.shape
    items = ((i, (lambda i=i: np.ascontiguousarray(frames[i]))) for i in range(count))
    return _Source("input video array", width, height, fps, items, _constant_rate(fps), count / fps)


def _natural_key(name: str) -> list[Any]:
    """frame_2.png before frame_10.png; zero-padded names sort the same either way."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _png_files(folder: Path) -> list[Path]:
    files = sorted(
        (p for p in folder.iterdir() if p.suffix.lower() == ".png" and p.is_file()), key=lambda p: _natural_key(p.name)
    )
    if not files:
        raise UserError(f"{_name(folder)} is a folder with no PNG frames in it")
    return files


def _png_size(path: Path, name: str) -> tuple[int, int]:
    try:
        with Image.open(path) as image:
            if image.format != "PNG":
                raise UnidentifiedImageError
            return image.size
    except (UnidentifiedImageError, OSError):
        raise UserError(f"{name}: frame {path.name!r} is not a PNG image") from None


def _read_png(path: Path, name: str, size: tuple[int, int]) -> np.ndarray:
    width, height = _png_size(path, name)
    if (width, height) != size:
        raise UserError(f"{name}: frame {path.name!r} is {width}x{height}, not {size[0]}x{size[1]} like the first")
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))  # alpha dropped: the models take RGB
    except OSError:
        raise UserError(f"{name}: frame {path.name!r} is damaged") from None


def _open_pngs(files: list[Path], name: str, fps: float) -> _Source:
    width, height = _png_size(files[0], name)
    items = ((i, (lambda p=p: _read_png(p, name, (width, height)))) for i, p in enumerate(files))
    return _Source(name, width, height, fps, items, _constant_rate(fps), len(files) / fps)


def _open_gif(path: Path, name: str) -> Image.Image:
    try:
        image = Image.open(path)
    except (UnidentifiedImageError, OSError):
        raise UserError(f"{name} is not a video (not a GIF image)") from None
    if image.format != "GIF":
        image.close()
        raise UserError(f"{name} is not a video (not a GIF image)")
    return image


def _gif_duration_ms(image: Image.Image) -> int:
    duration = image.info.get("duration") or 0
    return int(duration) if duration > 10 else GIF_DEFAULT_DURATION_MS


def _open_gif_frames(path: Path, name: str) -> _Source:
    """Each frame's own duration gives its start time; the nominal rate is the average (frames / total duration)."""
    image = _open_gif(path, name)
    try:
        count = getattr(image, "n_frames", 1)
        starts_ms, total = [], 0
        for i in range(count):
            image.seek(i)
            starts_ms.append(total)
            total += _gif_duration_ms(image)
    except (OSError, EOFError):
        image.close()
        raise UserError(f"{name} is a damaged GIF") from None

    def frames() -> Iterator[tuple[int, Callable[[], np.ndarray]]]:
        for i in range(count):
            image.seek(i)  # GIF frames build on the previous one: seek in order, decode only the frames used
            yield i, lambda: np.asarray(image.convert("RGB"))

    def index_at(time: float) -> int:
        return max(0, bisect.bisect_right(starts_ms, time * 1000 + _EPS) - 1)

    width, height = image.size
    return _Source(name, width, height, 1000.0 * count / total, frames(), index_at, total / 1000.0, image.close)


def _open_ffmpeg(path: Path, name: str) -> tuple[Any, dict[str, Any]]:
    """imageio-ffmpeg's reader and its first yield, the metadata (nothing decoded yet)."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    try:
        meta = next(reader)
    except (OSError, RuntimeError, StopIteration):
        reader.close()
        raise UserError(f"{name} is not a video ffmpeg can read (another kind of file, or damaged)") from None
    fps = meta.get("fps") or 0
    if not meta.get("size") or not math.isfinite(fps) or fps <= 0:
        reader.close()
        raise UserError(f"{name} has no video stream with a frame rate")
    return reader, meta


def _open_ffmpeg_frames(path: Path, name: str) -> _Source:
    """Frames at the constant rate ffmpeg reports: frame i is shown from i / fps."""
    reader, meta = _open_ffmpeg(path, name)
    width, height = (int(side) for side in meta["size"])
    fps = float(meta["fps"])

    def frames() -> Iterator[tuple[int, Callable[[], np.ndarray]]]:
        try:
            for i, raw in enumerate(reader):
                yield i, functools.partial(_rgb_from_bytes, raw, width, height)
        except RuntimeError:
            raise UserError(f"{name} is damaged: ffmpeg could not decode all of it") from None

    return _Source(name, width, height, fps, frames(), _constant_rate(fps), None, reader.close)


def _rgb_from_bytes(raw: bytes, width: int, height: int) -> np.ndarray:
    return np.frombuffer(raw, np.uint8).reshape(height, width, 3)


# Content hashes.


def content_sha256(source: str | Path | np.ndarray) -> str:
    """A file's bytes; a PNG folder's sorted names and contents; an array's shape and bytes."""
    digest = hashlib.sha256()
    if isinstance(source, np.ndarray):
        digest.update(f"uint8 {tuple(source.shape)}\n".encode())
        digest.update(np.ascontiguousarray(source).data)
        return digest.hexdigest()
    path = Path(source)
    files = _png_files(path) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(file.name.encode() + b"\0" + file.stat().st_size.to_bytes(8, "big"))
        with file.open("rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()
