"""The backend protocol, and the choice of a backend for a model.

The pipeline owns what is the same for every backend (tokenizer, scheduler, the family's loop); a backend owns the
networks and runs them by name: encode text, predict noise, decode latents. `open_backend` decides which backend
class runs a model name (a preset, a diffusers folder or hub id, or an engine directory).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from t2v_fast.core.models import ModelInfo


class ModelBackend(Protocol):
    """The three calls the denoising loop makes; every backend implements exactly these."""

    name: str
    info: ModelInfo
    device: torch.device  # where the pipeline keeps the tensors it passes in and gets back
    dtype: torch.dtype

    @property
    def placement(self) -> dict[str, Any]:
        """Where the networks really run, for the sidecar: at least `device`, and e.g. execution providers."""

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token ids `(n, tokens)` -> text embeddings `(n, tokens, dim)`."""

    def predict_noise(
        self, sample: torch.Tensor, timestep: torch.Tensor, text_embeddings: torch.Tensor
    ) -> torch.Tensor:
        """Latents `(videos, frames, C, h, w)`, a scalar timestep and per-video text embeddings -> noise, same shape."""

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Denoised latents `(n, C, h, w)` -> images `(n, 3, H, W)` in [-1, 1]."""
