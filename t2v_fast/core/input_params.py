"""What a request with an input video (guided video's control video, video editing's source) sets about it: the cut,
and the size, length and rate that follow from it unless set; and reading or probing it by those settings.

Light to import: a manifest's validation probes every row's input video from its header.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np

from t2v_fast.core.params import CommonParams, ParamProblem, param
from t2v_fast.core.video_input import InputVideo, VideoFacts, load_video, probe_video, resize_frame
from t2v_fast.errors import UserError

if TYPE_CHECKING:
    from t2v_fast.core.models import ModelCard

INPUT_VIDEO = "input video (guided video, video editing)"
# Each task's input video (`Task.input_videos`) in messages.
INPUT_TITLES = {"control": "control video", "video": "input video"}


@dataclass(frozen=True)
class InputVideoParams(CommonParams):
    """Settings of a video made from an input video. `frames`, `fps`, `height` and `width` are None until the input
    is read: by default its frames between `start` and `end`, at its own rate, its longer side at the model's native
    size."""

    start: float = param(
        float, "input video: start of the cut, in seconds", "Start (s)", default=0.0, minimum=0.0, section=INPUT_VIDEO
    )
    end: float | None = param(
        float,
        "input video: end of the cut, in seconds",
        "End (s)",
        minimum=0.0,
        exclusive=True,
        derived="the end of the video",
        section=INPUT_VIDEO,
    )

    optional: ClassVar[tuple[str, ...]] = ("frames", "fps", "height", "width", "end", "chunk_size")

    @classmethod
    def derive(cls, values: dict[str, Any], card: ModelCard, problems: list[ParamProblem]) -> list[ParamProblem]:
        """The size stays unset (the input's) unless both sides are given; the cut in order; fast mode is the text
        to video path's only."""
        given = [name for name in ("height", "width") if name in values]
        found = super().derive(values, card, problems)
        if len(given) == 1:
            found.append(ParamProblem((given[0],), "give both height and width, or neither (the input video's)"))
        if not given:
            del values["height"], values["width"]
        said = {name for p in problems for name in p.fields}
        end = values.get("end")
        if end is not None and not {"start", "end"} & said and end <= values["start"]:
            found.append(ParamProblem(("end", "start"), f"end ({end:g} s) must be after start ({values['start']:g} s)"))
        if "cache_interval" not in said and values["cache_interval"] > 1:
            found.append(ParamProblem(("cache_interval",), "fast mode (cache_interval > 1) runs text to video only"))
        return found


Settings = TypeVar("Settings", bound=InputVideoParams)


def read_input(source: Any, settings: Settings, native_size: int, what: str) -> tuple[InputVideo, Settings]:
    """The input video as the settings cut, resample and size it: `frames` (when set) of it from `start`, at `fps`
    (default: its own rate), `width`×`height` (default: its longer side at the model's native size); and the
    settings completed by it (their unset frames, fps, height and width become the video's). `what` names it in
    messages ("control video")."""
    resolution = None if settings.height is not None else native_size
    video = load_video(source, start=settings.start, end=settings.end, fps=settings.fps, resolution=resolution)
    frames = video.frames
    if settings.frames is not None:
        if len(frames) < settings.frames:
            raise UserError(
                f"{what} {video.source} has {len(frames)} frames from {settings.start:g} s at {video.fps:g}"
                f" fps, fewer than frames={settings.frames}"
            )
        frames = frames[: settings.frames]
    if settings.height is not None and settings.width is not None:  # both or neither (`InputVideoParams.derive`)
        frames = np.stack([resize_frame(frame, (settings.width, settings.height)) for frame in frames])
    height, width = frames.shape[1:3]
    completed = replace(settings, frames=len(frames), fps=video.fps, height=height, width=width)
    return replace(video, frames=frames), completed


def probe_input(source: str | Path, settings: InputVideoParams, what: str) -> VideoFacts:
    """The checks an input video's header allows, without decoding it (a night checks every row this way): it
    exists, reads as a video, its cut starts before it ends, and it holds the frames asked for (when the header
    gives its length)."""
    facts = probe_video(source)
    if facts.duration is None:
        return facts
    if settings.start >= facts.duration:
        raise UserError(f"{what} {source}: start {settings.start:g} s is not before its end ({facts.duration:g} s)")
    if settings.frames is not None:
        end = min(settings.end or facts.duration, facts.duration)
        available = math.ceil((end - settings.start) * (settings.fps or facts.fps) - 1e-6)
        if available < settings.frames:
            raise UserError(
                f"{what} {source} has about {available} frames from {settings.start:g} s at"
                f" {settings.fps or facts.fps:g} fps, fewer than frames={settings.frames}"
            )
    return facts
