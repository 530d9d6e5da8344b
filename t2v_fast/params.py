"""Generation parameters: defaults of the reference, validation with messages that name the parameter."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from diffusers import DDIMScheduler

from .errors import UserError
from .schedule import DEFAULT_STEPS, resolve_t0_t1


@dataclass(frozen=True)
class GenerationParams:
    """Every per-video setting. `height`/`width` default to the model's native size; t0/t1 follow `schedule`."""

    frames: int = 8
    steps: int = DEFAULT_STEPS
    guidance: float = 7.5
    height: int | None = None
    width: int | None = None
    motion_x: float = 12.0
    motion_y: float = 12.0
    t0: int | None = None
    t1: int | None = None
    chunk_size: int | None = None
    fps: float = 4.0

    def resolve(self, scheduler: DDIMScheduler, native_size: int, size_multiple: int) -> GenerationParams:
        """Validate everything and fill every default, so the result fully describes the video."""
        _require_int("frames", self.frames, minimum=1)
        _require_int("steps", self.steps, minimum=2)
        for name in ("guidance", "motion_x", "motion_y", "fps"):
            if not isinstance(getattr(self, name), (int, float)) or not math.isfinite(getattr(self, name)):
                raise UserError(f"{name} must be a finite number, got {getattr(self, name)!r}")
        if self.guidance < 0:
            raise UserError(f"guidance must be >= 0, got {self.guidance}")
        if self.fps <= 0:
            raise UserError(f"fps must be > 0, got {self.fps}")
        height = native_size if self.height is None else self.height
        width = native_size if self.width is None else self.width
        for name, value in (("height", height), ("width", width)):
            _require_int(name, value, minimum=size_multiple)
            if value % size_multiple:
                raise UserError(f"{name} must be a multiple of {size_multiple}, got {value}")
        if self.chunk_size is not None:
            _require_int("chunk_size", self.chunk_size, minimum=2)
        for name in ("t0", "t1"):
            if getattr(self, name) is not None:
                _require_int(name, getattr(self, name), minimum=0)
        t0, t1 = resolve_t0_t1(scheduler, self.steps, self.t0, self.t1)
        return replace(
            self, height=height, width=width, t0=t0, t1=t1, guidance=float(self.guidance), fps=float(self.fps)
        )

    @property
    def uses_guidance(self) -> bool:
        return self.guidance > 1.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _require_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise UserError(f"{name} must be >= {minimum}, got {value}")
