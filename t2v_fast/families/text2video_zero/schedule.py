"""Which denoising steps Text2Video-Zero runs, and the rule that derives t0/t1 for any step count.

`t0` and `t1` count steps from the end of the schedule, as in the reference: the timestep at `t` is
`timesteps[steps - 1 - t]`. With the defaults (50 DDIM steps, t0=44, t1=47) these are timesteps 881 and 941 of 1000.

Rule for other step counts (when t0/t1 are not given): t1 is the index whose timestep is nearest the default t1's
timestep, among 1..steps-1; t0 is the index nearest the default t0's timestep, among 0..t1-1 (ties go to the smaller
index). So t0 < t1 < steps always holds, and with 50 steps the rule gives exactly 44 and 47. A given t0 or t1 is
validated and the other derived under the same constraint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from t2v_fast.core.params import DEFAULT_STEPS, MIN_STEPS
from t2v_fast.errors import UserError

if TYPE_CHECKING:  # imported where used, so that the command line's argument parsing stays light
    import torch

    from t2v_fast.core.models import Scheduler

DEFAULT_T0 = 44
DEFAULT_T1 = 47


def timesteps_for(scheduler: Scheduler, steps: int) -> torch.Tensor:
    """The scheduler's timesteps for `steps` steps (cached: validating a manifest asks for them for every row)."""
    import torch

    return torch.tensor(_timesteps(json.dumps(dict(scheduler.config), sort_keys=True, default=str), steps))


@lru_cache(maxsize=256)
def _timesteps(config: str, steps: int) -> tuple[int, ...]:
    from diffusers.schedulers.scheduling_ddim import DDIMScheduler

    probe = DDIMScheduler.from_config(json.loads(config))
    probe.set_timesteps(steps)
    return tuple(int(t) for t in probe.timesteps)


def _nearest_index(timesteps: torch.Tensor, target: int, candidates: range) -> int:
    steps = len(timesteps)
    return min(candidates, key=lambda t: (abs(int(timesteps[steps - 1 - t]) - target), t))


def resolve_t0_t1(scheduler: Scheduler, steps: int, t0: int | None, t1: int | None) -> tuple[int, int]:
    """Validate explicit t0/t1 and derive missing ones (see module docstring)."""
    if steps < MIN_STEPS:
        raise UserError(f"steps must be at least {MIN_STEPS}, got {steps}")
    for name, value in (("t0", t0), ("t1", t1)):
        if value is not None and not 0 <= value < steps:
            raise UserError(f"{name} must be in [0, steps-1] = [0, {steps - 1}], got {value}")
    defaults = timesteps_for(scheduler, DEFAULT_STEPS)
    target0 = int(defaults[DEFAULT_STEPS - 1 - DEFAULT_T0])
    target1 = int(defaults[DEFAULT_STEPS - 1 - DEFAULT_T1])
    timesteps = timesteps_for(scheduler, steps)
    if t1 is None:
        lowest = 1 if t0 is None else t0 + 1
        if lowest >= steps:
            raise UserError(f"t0={t0} leaves no room for t1: t0 < t1 < steps={steps} is impossible")
        t1 = _nearest_index(timesteps, target1, range(lowest, steps))
    if t0 is None:
        if t1 == 0:
            raise UserError("t1 must be at least 1 so that t0 < t1")
        t0 = _nearest_index(timesteps, target0, range(0, t1))
    if not 0 <= t0 < t1 < steps:
        raise UserError(f"t0 and t1 must satisfy 0 <= t0 < t1 < steps; got t0={t0}, t1={t1}, steps={steps}")
    return t0, t1


@dataclass(frozen=True)
class StepPlan:
    """Slices of the timestep list: the first frame goes to t1 then t0; all frames then go from t1 to the end."""

    timesteps: torch.Tensor
    index_t1: int
    index_t0: int

    @classmethod
    def build(cls, scheduler: Scheduler, steps: int, t0: int, t1: int) -> StepPlan:
        return cls(timesteps_for(scheduler, steps), steps - 1 - t1, steps - 1 - t0)

    @property
    def to_t1(self) -> torch.Tensor:
        return self.timesteps[: self.index_t1]

    @property
    def t1_to_t0(self) -> torch.Tensor:
        return self.timesteps[self.index_t1 : self.index_t0]

    @property
    def from_t1(self) -> torch.Tensor:
        return self.timesteps[self.index_t1 :]

    @property
    def timestep_t0(self) -> int:
        return int(self.timesteps[self.index_t0])

    @property
    def timestep_t1(self) -> int:
        return int(self.timesteps[self.index_t1])
