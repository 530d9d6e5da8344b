"""Text2Video-Zero's own parameters: the latent motion, where it starts (t0) and re-noises (t1), and chunking."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from t2v_fast.core.params import CommonParams, ParamProblem, integer_problems, param
from t2v_fast.errors import UserError
from t2v_fast.families.text2video_zero.schedule import resolve_t0_t1

if TYPE_CHECKING:
    from t2v_fast.core.models import ModelCard

MIN_CHUNK_SIZE = 2


def chunk_size_param() -> Any:
    """The chunk size field: Text2Video-Zero's and guided video's chunks follow one rule (`pipeline.plan_chunks`)."""
    return param(
        int,
        "frames per UNet pass for long videos, anchor included",
        "Chunk size",
        minimum=MIN_CHUNK_SIZE,
        derived="the whole video in one pass",
    )


@dataclass(frozen=True)
class TextToVideoZeroParams(CommonParams):
    """Settings of one Text2Video-Zero video: the common ones and the motion's."""

    motion_x: float = param(
        float, "horizontal motion per frame, in 1/512 of the width", "Global translation δx", family_default=True
    )
    motion_y: float = param(
        float, "vertical motion per frame, in 1/512 of the height", "Global translation δy", family_default=True
    )
    t0: int = param(
        int, "motion start step, counted from the end", "t0", derived="44 of 50 steps, scaled to the step count"
    )
    t1: int = param(
        int, "re-noising step, counted from the end", "t1", derived="47 of 50 steps, scaled to the step count"
    )
    chunk_size: int | None = chunk_size_param()

    optional: ClassVar[tuple[str, ...]] = ("chunk_size",)

    @classmethod
    def derive(cls, values: dict[str, Any], card: ModelCard, problems: list[ParamProblem]) -> list[ParamProblem]:
        """t0 and t1 within the step count, the missing one(s) derived (`schedule.resolve_t0_t1`)."""
        found = super().derive(values, card, problems)
        steps_ok = not any("steps" in p.fields for p in problems)
        steps = values["steps"]
        for name in ("t0", "t1"):
            already = any(name in p.fields for p in problems)  # not an integer, or negative: said once
            if values.get(name) is not None and not already:
                maximum = steps - 1 if steps_ok else None
                found += integer_problems(name, values[name], minimum=0, maximum=maximum, maximum_name="steps-1")
        if steps_ok and not found and not any(set(p.fields) & {"t0", "t1"} for p in problems):
            try:
                values["t0"], values["t1"] = resolve_t0_t1(card.scheduler, steps, values.get("t0"), values.get("t1"))
            except UserError as error:
                found.append(ParamProblem(("t0", "t1", "steps"), str(error)))
        return found
