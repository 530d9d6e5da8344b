"""The result of a generation: uint8 frames plus the metadata that makes it reproducible, saved atomically."""

from __future__ import annotations

import contextlib
import errno
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from t2v_fast.atomic import atomic_path
from t2v_fast.errors import UserError


@dataclass
class Video:
    """`frames` is `(F, H, W, 3)` uint8 RGB; `metadata` is exactly what `save` writes to the JSON sidecar."""

    frames: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)
    control: np.ndarray | None = None  # guided video: the control maps it followed, uint8 `(F, H, W, 3)`

    def save(self, path: str | Path, fps: float | None = None, save_control: bool = False) -> Path:
        """Write an H.264 MP4 and its `.json` sidecar, each to a temporary file first and then renamed into place;
        with `save_control`, a guided video's control maps too, as `NAME.control.mp4`.

        The sidecar is written last, so its presence means the MP4 beside it is complete.
        """
        path = Path(path)
        if fps is not None:
            self.metadata.setdefault("params", {})["fps"] = float(fps)
        fps = self.metadata.get("params", {}).get("fps", 4.0)
        check_writable(path)
        sidecar = path.with_suffix(".json")
        control = self.control if save_control else None
        # All written before any is renamed (renaming takes no space): a disk that fills up leaves none.
        with contextlib.ExitStack() as stack:
            tmp_sidecar = stack.enter_context(atomic_path(sidecar))
            tmp = stack.enter_context(atomic_path(path))
            _write_complete_mp4(self.frames, tmp, fps)
            if control is not None:
                _write_complete_mp4(control, stack.enter_context(atomic_path(path.with_suffix(".control.mp4"))), fps)
            tmp_sidecar.write_text(json.dumps(self.metadata, indent=2, sort_keys=True) + "\n")
        return path


def _write_complete_mp4(frames: np.ndarray, tmp: Path, fps: float) -> None:
    try:
        write_mp4(frames, tmp, fps)
    except OSError as error:
        # ffmpeg quit (imageio-ffmpeg's broken pipe): what the file shows says more than the pipe.
        if tmp.exists() and (error.errno == errno.EPIPE or "FFMPEG COMMAND" in str(error)):
            check_complete_mp4(tmp)
        raise
    check_complete_mp4(tmp)


def check_writable(path: Path) -> None:
    """Fail before any work is done when an output file cannot be written."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.suffix.lower() != ".mp4":
        raise UserError(f"output {str(path)!r} must end in .mp4")
    if not parent.is_dir():
        raise UserError(f"output folder {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK):
        raise UserError(f"output folder {str(parent)!r} is not writable")
    if path.is_dir():
        raise UserError(f"output {str(path)!r} is a folder")


def prepare_output_folder(folder: Path) -> None:
    """Create an output folder, or fail before any work is done when it is a file, cannot be created or written."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"output folder {str(folder)!r} is a file")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create output folder {str(folder)!r}: {error.strerror}") from None
    if unwritable(folder):
        raise UserError(f"output folder {str(folder)!r} is not writable")


def unwritable(folder: Path) -> str | None:
    """Why nothing can be written into `folder` (a read-only mount, where even root cannot write; no permission), or
    None."""
    if os.statvfs(folder).f_flag & os.ST_RDONLY:
        return os.strerror(errno.EROFS)
    if not os.access(folder, os.W_OK | os.X_OK):
        return os.strerror(errno.EACCES)
    return None


def check_complete_mp4(path: Path) -> None:
    """Raise `OSError` unless `path` is a whole MP4: top-level boxes that fill the file, with `ftyp`, `mdat`, `moov`.

    ffmpeg that fails to write (a full disk while writing the trailer) exits with an error that imageio-ffmpeg does
    not pass on, leaving a truncated file; this is what tells us.
    """
    size, boxes, offset = path.stat().st_size, set(), 0
    with path.open("rb") as handle:
        while offset + 8 <= size:
            handle.seek(offset)
            header = handle.read(16)
            length, kind = int.from_bytes(header[:4], "big"), header[4:8]
            if length == 1 and len(header) == 16:
                length = int.from_bytes(header[8:16], "big")
            elif length == 0:
                length = size - offset
            if length < 8:
                break
            boxes.add(kind)
            offset += length
    if offset == size and {b"ftyp", b"mdat", b"moov"} <= boxes:
        return
    stats = os.statvfs(path.parent)
    free = stats.f_bavail * stats.f_frsize
    # ffmpeg's own error is not passed on: a device (nearly) out of space is the cause we can name.
    code = errno.ENOSPC if free < 1 << 20 else errno.EIO
    raise OSError(code, f"{os.strerror(code)} (ffmpeg wrote an incomplete MP4; {free} bytes left on the device)")


def write_mp4(frames: np.ndarray, path: Path, fps: float) -> None:
    import imageio_ffmpeg

    _count, height, width, _ = frames.shape
    writer = imageio_ffmpeg.write_frames(
        str(path),
        (width, height),
        fps=fps,
        codec="libx264",
        macro_block_size=2,  # our sizes are multiples of 8; never let the writer rescale frames
        quality=None,
        output_params=["-crf", "16", "-f", "mp4"],
        ffmpeg_log_level="error",
    )
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
