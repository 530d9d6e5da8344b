"""The result of a generation: uint8 frames plus the metadata that makes it reproducible, saved atomically."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_path
from .errors import UserError


@dataclass
class Video:
    """`frames` is `(F, H, W, 3)` uint8 RGB; `metadata` is exactly what `save` writes to the JSON sidecar."""

    frames: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | Path, fps: float | None = None) -> Path:
        """Write an H.264 MP4 and its `.json` sidecar, each to a temporary file first and then renamed into place.

        The sidecar is written last, so its presence means the MP4 beside it is complete.
        """
        path = Path(path)
        if fps is not None:
            self.metadata.setdefault("params", {})["fps"] = float(fps)
        fps = self.metadata.get("params", {}).get("fps", 4.0)
        check_writable(path)
        with atomic_path(path) as tmp:
            write_mp4(self.frames, tmp, fps)
        sidecar = path.with_suffix(".json")
        with atomic_path(sidecar) as tmp:
            tmp.write_text(json.dumps(self.metadata, indent=2, sort_keys=True) + "\n")
        return path


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
