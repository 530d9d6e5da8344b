"""Guidance: how the UNet batch is laid out around the latents, and how its predictions combine into one.

Shaped like diffusers' `guiders/`: a guider says how many conditions each step runs (`conditions`), stacks the
latents for them (`batch`) and combines the predictions (`combine`). Classifier-free guidance is two-way
(unconditional, conditional); Instruct-Pix2Pix's is three-way (adding the image condition), as another guider.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ClassifierFreeGuidance:
    """Two-way: `noise = unconditional + scale · (conditional - unconditional)`; off at a scale of 1 or less, when
    the UNet runs the conditional branch only. The text embeddings are `[negatives..., prompts...]` to match."""

    scale: float

    @property
    def enabled(self) -> bool:
        return self.scale > 1.0

    @property
    def conditions(self) -> int:
        return 2 if self.enabled else 1

    def batch(self, latents: torch.Tensor) -> torch.Tensor:
        return torch.cat([latents] * self.conditions) if self.enabled else latents

    def combine(self, noise: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return noise
        unconditional, conditional = noise.chunk(2)
        return unconditional + self.scale * (conditional - unconditional)
