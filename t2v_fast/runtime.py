"""Backends: the narrow model interface that the denoising loop talks to.

The pipeline owns what is the same for every backend (tokenizer, scheduler, the Text2Video-Zero loop); a backend
owns the three networks and runs them: encode text, predict noise, decode latents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from .attention_plugin import VideoUNet
from .models import ModelComponents


@dataclass(frozen=True)
class ModelInfo:
    """What the pipeline needs to know about the networks behind a backend."""

    model_id: str
    weights_sha256: str
    latent_channels: int
    vae_scale_factor: int
    native_size: int
    text_max_length: int

    @classmethod
    def from_components(cls, components: ModelComponents) -> ModelInfo:
        return cls(
            model_id=components.model_id,
            weights_sha256=components.weights_sha256,
            latent_channels=components.unet.config.in_channels,
            vae_scale_factor=components.vae_scale_factor,
            native_size=components.native_size,
            text_max_length=components.tokenizer.model_max_length,
        )


class ModelBackend(Protocol):
    """The three calls the denoising loop makes; every backend implements exactly these."""

    name: str
    info: ModelInfo
    device: torch.device
    dtype: torch.dtype

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token ids `(n, tokens)` -> text embeddings `(n, tokens, dim)`."""

    def predict_noise(
        self, sample: torch.Tensor, timestep: torch.Tensor, text_embeddings: torch.Tensor
    ) -> torch.Tensor:
        """Latents `(videos, frames, C, h, w)`, a scalar timestep and per-video text embeddings -> noise, same shape."""

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Denoised latents `(n, C, h, w)` -> images `(n, 3, H, W)` in [-1, 1]."""


class TorchBackend:
    """Runs the PyTorch modules directly; the reference every other backend is checked against."""

    name = "torch"

    def __init__(self, components: ModelComponents):
        self.info = ModelInfo.from_components(components)
        self.text_encoder = components.text_encoder
        self.unet = VideoUNet(components.unet)
        self.vae = components.vae
        self.device = self.unet.unet.device
        self.dtype = self.unet.unet.dtype

    @torch.inference_mode()
    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids.to(self.device))[0]

    @torch.inference_mode()
    def predict_noise(
        self, sample: torch.Tensor, timestep: torch.Tensor, text_embeddings: torch.Tensor
    ) -> torch.Tensor:
        return self.unet(sample, timestep.to(self.device), text_embeddings)

    @torch.inference_mode()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0]


BACKENDS = {"torch": TorchBackend}
