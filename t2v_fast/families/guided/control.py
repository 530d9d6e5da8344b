"""The control video of a guided request: checked from its header (a night checks every row so), then read by the
settings' cut, rate and size. Light to import: a manifest's validation uses it."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from t2v_fast.core.video_input import InputVideo, VideoFacts, load_video, probe_video, resize_frame
from t2v_fast.errors import UserError
from t2v_fast.families.guided.params import GuidedParams


def read_control(source: Any, settings: GuidedParams, native_size: int) -> InputVideo:
    """The control video as the settings cut, resample and size it: `frames` (when set) of it from `start`, at
    `fps` (default: its own rate), `width`×`height` (default: its longer side at the model's native size)."""
    resolution = None if settings.height is not None else native_size
    video = load_video(source, start=settings.start, end=settings.end, fps=settings.fps, resolution=resolution)
    frames = video.frames
    if settings.frames is not None:
        if len(frames) < settings.frames:
            raise UserError(
                f"control video {video.source} has {len(frames)} frames from {settings.start:g} s at {video.fps:g}"
                f" fps, fewer than frames={settings.frames}"
            )
        frames = frames[: settings.frames]
    if settings.height is not None and settings.width is not None:  # both or neither (`GuidedParams.derive`)
        frames = np.stack([resize_frame(frame, (settings.width, settings.height)) for frame in frames])
    return replace(video, frames=frames)


def probe_control(source: str | Path, settings: GuidedParams) -> VideoFacts:
    """The checks a control video's header allows, without decoding it (a night checks every row this way): it
    exists, reads as a video, its cut starts before it ends, and it holds the frames asked for (when the header
    gives its length)."""
    facts = probe_video(source)
    if facts.duration is None:
        return facts
    if settings.start >= facts.duration:
        raise UserError(
            f"control video {source}: start {settings.start:g} s is not before its end ({facts.duration:g} s)"
        )
    if settings.frames is not None:
        end = min(settings.end or facts.duration, facts.duration)
        available = math.ceil((end - settings.start) * (settings.fps or facts.fps) - 1e-6)
        if available < settings.frames:
            raise UserError(
                f"control video {source} has about {available} frames from {settings.start:g} s at"
                f" {settings.fps or facts.fps:g} fps, fewer than frames={settings.frames}"
            )
    return facts
