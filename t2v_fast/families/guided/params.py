"""Guided video's parameters: the ControlNet's weight, the annotator that makes its control maps, and the cut of the
control video. The video's length, rate and size follow from the control video unless set."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from t2v_fast.core.params import CommonParams, ParamProblem, param
from t2v_fast.families.text2video_zero.params import chunk_size_param

if TYPE_CHECKING:
    from t2v_fast.core.models import ModelCard

GUIDED_VIDEO = "guided video (ControlNet)"
# What turns the control video's frames into control maps (`t2v_fast.annotators`): edges, depth, or nothing (the
# video already is the maps, e.g. rendered pose skeletons).
ANNOTATOR_NAMES = ("canny", "depth", "none")
MAX_THRESHOLD = 255


@dataclass(frozen=True)
class GuidedParams(CommonParams):
    """Settings of one guided video. `frames`, `fps`, `height` and `width` are None until the control video is read:
    by default its frames between `start` and `end`, at its own rate, its longer side at the model's native size."""

    controlnet_scale: float = param(
        float,
        "ControlNet conditioning scale (0: the ControlNet has no effect)",
        "ControlNet scale",
        default=1.0,
        minimum=0.0,
        section=GUIDED_VIDEO,
    )
    annotator: str = param(
        str,
        "control maps from the control video: canny (edges), depth (MiDaS), none (the video is the maps)",
        "Annotator",
        default="canny",
        choices=ANNOTATOR_NAMES,
        section=GUIDED_VIDEO,
    )
    canny_low: int = param(
        int, "Canny's low threshold (0-255)", "Canny low threshold", default=100, minimum=0, section=GUIDED_VIDEO
    )
    canny_high: int = param(
        int, "Canny's high threshold (0-255)", "Canny high threshold", default=200, minimum=0, section=GUIDED_VIDEO
    )
    start: float = param(
        float,
        "control video: start of the cut, in seconds",
        "Start (s)",
        default=0.0,
        minimum=0.0,
        section=GUIDED_VIDEO,
    )
    end: float | None = param(
        float,
        "control video: end of the cut, in seconds",
        "End (s)",
        minimum=0.0,
        exclusive=True,
        derived="the end of the video",
        section=GUIDED_VIDEO,
    )
    chunk_size: int | None = chunk_size_param()

    optional: ClassVar[tuple[str, ...]] = ("frames", "fps", "height", "width", "end", "chunk_size")

    @classmethod
    def derive(cls, values: dict[str, Any], card: ModelCard, problems: list[ParamProblem]) -> list[ParamProblem]:
        """The size stays unset (the control video's) unless both sides are given; thresholds and cut in order; fast
        mode is the text-to-video path's only."""
        given = [name for name in ("height", "width") if name in values]
        found = super().derive(values, card, problems)
        if len(given) == 1:
            found.append(ParamProblem((given[0],), "give both height and width, or neither (the control video's)"))
        if not given:
            del values["height"], values["width"]
        said = {name for p in problems for name in p.fields}
        for name in ("canny_low", "canny_high"):
            if name not in said and values[name] > MAX_THRESHOLD:
                found.append(ParamProblem((name,), f"{name} must be <= {MAX_THRESHOLD}, got {values[name]}"))
        if not {"canny_low", "canny_high"} & said and values["canny_low"] > values["canny_high"]:
            found.append(ParamProblem(("canny_low", "canny_high"), "canny_low must not exceed canny_high"))
        end = values.get("end")
        if end is not None and not {"start", "end"} & said and end <= values["start"]:
            found.append(ParamProblem(("end", "start"), f"end ({end:g} s) must be after start ({values['start']:g} s)"))
        if "cache_interval" not in said and values["cache_interval"] > 1:
            found.append(ParamProblem(("cache_interval",), "fast mode (cache_interval > 1) does not run guided video"))
        return found
