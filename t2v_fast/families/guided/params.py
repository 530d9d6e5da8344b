"""Guided video's parameters: the ControlNet's weight and the annotator that makes its control maps; the control
video's cut, and the length, rate and size that follow from it, are every input video's (`InputVideoParams`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from t2v_fast.core.input_params import InputVideoParams
from t2v_fast.core.params import ParamProblem, param
from t2v_fast.families.text2video_zero.params import chunk_size_param

if TYPE_CHECKING:
    from t2v_fast.core.models import ModelCard

GUIDED_VIDEO = "guided video (ControlNet)"
# What turns the control video's frames into control maps (`t2v_fast.annotators`): edges, depth, or nothing (the
# video already is the maps, e.g. rendered pose skeletons).
ANNOTATOR_NAMES = ("canny", "depth", "none")
MAX_THRESHOLD = 255


@dataclass(frozen=True)
class GuidedParams(InputVideoParams):
    """Settings of one guided video: the input video's (`InputVideoParams`: the control video's cut, and the size,
    length and rate it gives) and the ControlNet's."""

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
    chunk_size: int | None = chunk_size_param()

    @classmethod
    def derive(cls, values: dict[str, Any], card: ModelCard, problems: list[ParamProblem]) -> list[ParamProblem]:
        """The thresholds in order (the cut and size: `InputVideoParams`)."""
        found = super().derive(values, card, problems)
        said = {name for p in problems for name in p.fields}
        for name in ("canny_low", "canny_high"):
            if name not in said and values[name] > MAX_THRESHOLD:
                found.append(ParamProblem((name,), f"{name} must be <= {MAX_THRESHOLD}, got {values[name]}"))
        if not {"canny_low", "canny_high"} & said and values["canny_low"] > values["canny_high"]:
            found.append(ParamProblem(("canny_low", "canny_high"), "canny_low must not exceed canny_high"))
        return found
