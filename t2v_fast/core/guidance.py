"""Guidance: how the UNet batch is laid out around the latents, and how its predictions combine into one.

Shaped like diffusers' `guiders/`: a guider says how many conditions each step runs (`conditions`), which text each
branch reads (`texts`), stacks the latents for them (`batch`) and combines the predictions (`combine`). Classifier-free
guidance is two-way (unconditional, conditional); Instruct-Pix2Pix's is three-way (text and image, image only,
neither), which also lays out the input frames' latents (`image_batch`). `GUIDERS` maps a task's kind of guidance
(`Task.guidance`) to its guider, made from a request's settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch


@dataclass(frozen=True)
class _Guidance:
    """What every guider shares: on above a text scale of 1 (off: the UNet runs the conditional branch alone), and
    the latents repeated once per branch."""

    scale: float
    CONDITIONS: ClassVar[int] = 1  # the UNet batch per video with guidance on (what engine profiles must cover)

    @property
    def enabled(self) -> bool:
        return self.scale > 1.0

    @property
    def conditions(self) -> int:
        return self.CONDITIONS if self.enabled else 1

    def batch(self, latents: torch.Tensor) -> torch.Tensor:
        return torch.cat([latents] * self.conditions) if self.enabled else latents


@dataclass(frozen=True)
class ClassifierFreeGuidance(_Guidance):
    """Two-way: `noise = unconditional + scale · (conditional - unconditional)`. The text embeddings are
    `[negatives..., prompts...]` to match."""

    CONDITIONS: ClassVar[int] = 2

    @classmethod
    def of(cls, settings: Any) -> ClassifierFreeGuidance:
        return cls(settings.guidance)

    def texts(self, prompts: Sequence[str], negatives: Sequence[str]) -> list[str]:
        return [*negatives, *prompts] if self.enabled else list(prompts)

    def combine(self, noise: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return noise
        unconditional, conditional = noise.chunk(2)
        return unconditional + self.scale * (conditional - unconditional)


@dataclass(frozen=True)
class InstructPix2PixGuidance(_Guidance):
    """Three-way, as diffusers' `StableDiffusionInstructPix2PixPipeline` lays it out: branches (text and image, image
    only, neither), `noise = neither + scale · (text - image) + image_scale · (image - neither)`. The text branch reads
    the prompt, the other two the negative prompt; the image branches read the input frames' latents, the last zeros.
    Off, one branch (text and image); the image scale is at least 1 (`EditParams`)."""

    image_scale: float
    CONDITIONS: ClassVar[int] = 3

    @classmethod
    def of(cls, settings: Any) -> InstructPix2PixGuidance:
        return cls(settings.guidance, settings.image_guidance)

    def texts(self, prompts: Sequence[str], negatives: Sequence[str]) -> list[str]:
        return [*prompts, *negatives, *negatives] if self.enabled else list(prompts)

    def image_batch(self, image_latents: torch.Tensor) -> torch.Tensor:
        """The input frames' latents as the branches read them: (text and image, image only, neither: zeros)."""
        if not self.enabled:
            return image_latents
        return torch.cat([image_latents, image_latents, torch.zeros_like(image_latents)])

    def combine(self, noise: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return noise
        text, image, neither = noise.chunk(3)
        return neither + self.scale * (text - image) + self.image_scale * (image - neither)


Guider = ClassifierFreeGuidance | InstructPix2PixGuidance
GUIDERS: dict[str, type[ClassifierFreeGuidance] | type[InstructPix2PixGuidance]] = {
    "two-way": ClassifierFreeGuidance,
    "three-way": InstructPix2PixGuidance,
}
