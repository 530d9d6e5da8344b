"""Generation parameters and every rule about their values, in one place.

`GenerationParams.problems(model)` collects every violation (the manifest reports them all, with row and column);
`resolve(model)` raises them as one `UserError` or returns the parameters with every default filled in.
`request_problems` holds the rules for what is not a generation parameter but belongs to one video request: the
prompt, the negative prompt, the seed and the number of videos per prompt. The API, the command line, manifests and
the flows all go through these two functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from t2v_fast.core.families import FAMILY_PARAMS, takes
from t2v_fast.core.schedule import DEFAULT_STEPS, MIN_STEPS, resolve_t0_t1
from t2v_fast.errors import UserError

if TYPE_CHECKING:
    from t2v_fast.core.models import ModelSpec

MAX_SEED = 2**63 - 1
MIN_CHUNK_SIZE = 2


@dataclass(frozen=True)
class ParamProblem:
    """One violated rule. `fields` are the parameters involved, the one to blame first."""

    fields: tuple[str, ...]
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class GenerationParams:
    """Every per-video setting; None means the model's default. `height`/`width` default to the model's native size,
    frames, guidance, fps and motion to its family's (`t2v_fast.core.families`), t0/t1 follow `schedule`. Motion, t0, t1
    and chunk_size are Text2Video-Zero's: a family that does not take them refuses them and resolves them to None."""

    frames: int | None = None
    steps: int = DEFAULT_STEPS
    guidance: float | None = None
    height: int | None = None
    width: int | None = None
    motion_x: float | None = None
    motion_y: float | None = None
    t0: int | None = None
    t1: int | None = None
    chunk_size: int | None = None
    fps: float | None = None

    def problems(self, model: ModelSpec) -> list[ParamProblem]:
        """Every rule these parameters break for `model`, in field order; empty when they are valid."""
        return self.check(model)[1]

    def resolve(self, model: ModelSpec) -> GenerationParams:
        """Validate everything and fill every default, so the result fully describes the video."""
        resolved, problems = self.check(model)
        raise_problems(problems)
        return resolved

    def check(self, model: ModelSpec) -> tuple[GenerationParams, list[ParamProblem]]:
        """The resolved parameters and no problems, or these parameters unchanged and every problem."""
        family = model.family
        given = {name: value for name, value in asdict(self).items() if value is not None}
        values = {**family.defaults, "height": model.native_size, "width": model.native_size, **given}
        problems = [
            *_integer("frames", values["frames"], minimum=1),
            *_integer("steps", self.steps, minimum=MIN_STEPS),
            *_number("guidance", values["guidance"], minimum=0.0),
            *_size("height", values["height"], model.size_multiple, model.min_size),
            *_size("width", values["width"], model.size_multiple, model.min_size),
        ]
        for name in sorted(set(given) & set(FAMILY_PARAMS), key=self.names().index):
            if not takes(family, name):
                owner = FAMILY_PARAMS[name].title
                problems.append(
                    ParamProblem((name,), f"{name} is a {owner} parameter; {family.title} models do not take it")
                )
        if takes(family, "motion_x"):
            problems += [*_number("motion_x", values["motion_x"]), *_number("motion_y", values["motion_y"])]
        if takes(family, "t0"):
            problems += self._t0_t1_problems(model, values, problems)
        if takes(family, "chunk_size") and self.chunk_size is not None:
            problems += _integer("chunk_size", self.chunk_size, minimum=MIN_CHUNK_SIZE)
        problems += _number("fps", values["fps"], minimum=0.0, exclusive=True)
        if problems:
            return self, problems
        values |= {"guidance": float(values["guidance"]), "fps": float(values["fps"])}
        return replace(self, **{name: values.get(name) for name in self.names()}), []

    def _t0_t1_problems(
        self, model: ModelSpec, values: dict[str, Any], problems: list[ParamProblem]
    ) -> list[ParamProblem]:
        """Check given t0/t1 and derive missing ones into `values` (Text2Video-Zero's motion start and re-noising)."""
        found = []
        step_count_ok = not any("steps" in p.fields for p in problems)
        for name in ("t0", "t1"):
            value = getattr(self, name)
            if value is not None:
                maximum = self.steps - 1 if step_count_ok else None
                found += _integer(name, value, minimum=0, maximum=maximum, maximum_name="steps-1")
        if step_count_ok and not found:
            try:
                values["t0"], values["t1"] = resolve_t0_t1(model.scheduler, self.steps, self.t0, self.t1)
            except UserError as error:
                found.append(ParamProblem(("t0", "t1", "steps"), str(error)))
        return found

    @property
    def uses_guidance(self) -> bool:
        return self.guidance > 1.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


def raise_problems(problems: Sequence[ParamProblem], where: str = "") -> None:
    """One `UserError` naming every problem (each once), prefixed by `where`; nothing when there are none."""
    if problems:
        raise UserError(where + "; ".join(dict.fromkeys(str(p) for p in problems)))


_NOT_GIVEN: Any = object()


def request_problems(
    *,
    prompt: Any = _NOT_GIVEN,
    negative_prompt: Any = _NOT_GIVEN,
    seed: Any = _NOT_GIVEN,
    videos_per_prompt: Any = _NOT_GIVEN,
) -> list[ParamProblem]:
    """Rules for a request's own values (those given): a prompt with text in it, a string negative prompt, a seed in
    [0, 2**63-1], at least one video per prompt."""
    problems = []
    if prompt is not _NOT_GIVEN:
        if not isinstance(prompt, str):
            problems.append(ParamProblem(("prompt",), f"prompt must be a string, got {type(prompt).__name__}"))
        elif not prompt.strip():
            problems.append(ParamProblem(("prompt",), "missing prompt"))
    if negative_prompt is not _NOT_GIVEN and not isinstance(negative_prompt, str):
        kind = type(negative_prompt).__name__
        problems.append(ParamProblem(("negative_prompt",), f"negative_prompt must be a string, got {kind}"))
    if seed is not _NOT_GIVEN:
        problems += _integer("seed", seed, minimum=0, maximum=MAX_SEED)
    if videos_per_prompt is not _NOT_GIVEN:
        problems += _integer("videos_per_prompt", videos_per_prompt, minimum=1)
    return problems


def _integer(
    name: str, value: Any, minimum: int, maximum: int | None = None, maximum_name: str | None = None
) -> list[ParamProblem]:
    if isinstance(value, bool) or not isinstance(value, int):
        return [ParamProblem((name,), f"{name} must be an integer, got {value!r}")]
    if maximum is not None and not minimum <= value <= maximum:
        bound = f"{maximum_name} = {maximum}" if maximum_name else str(maximum)
        return [ParamProblem((name,), f"{name} must be in [{minimum}, {bound}], got {value}")]
    if value < minimum:
        return [ParamProblem((name,), f"{name} must be >= {minimum}, got {value}")]
    return []


def _number(name: str, value: Any, minimum: float | None = None, exclusive: bool = False) -> list[ParamProblem]:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return [ParamProblem((name,), f"{name} must be a finite number, got {value!r}")]
    if minimum is not None and (value <= minimum if exclusive else value < minimum):
        return [ParamProblem((name,), f"{name} must be {'>' if exclusive else '>='} {minimum:g}, got {value}")]
    return []


def _size(name: str, value: Any, multiple: int, minimum: int) -> list[ParamProblem]:
    problems = _integer(name, value, minimum=minimum)
    if not problems and value % multiple:
        problems = [ParamProblem((name,), f"{name} must be a multiple of {multiple}, got {value}")]
    return problems
