"""The PyTorch backend: the modules export writes to ONNX, run as they are; the reference for every other backend."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from t2v_fast.core.deepcache import CachedUNet, CachingUNet
from t2v_fast.core.models import ModelCard, ModelComponents
from t2v_fast.core.networks import NETWORKS
from t2v_fast.families.modelscope.unet3d import chunk_feed_forward

# Tokens per feed-forward call in the torch backend: bounds the largest activation (the feed-forward's 4×-wide hidden
# layer, 8× with GEGLU) so that peak memory grows with frames no faster than the activations the UNet must keep.
FEED_FORWARD_CHUNK_TOKENS = 16384


class DeviceScalars:
    """Integer scalars (timesteps) copied to the device once each, so the denoising loop never waits on a copy."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cache: dict[int, torch.Tensor] = {}

    def get(self, value: torch.Tensor) -> torch.Tensor:
        key = int(value)
        if key not in self.cache:
            self.cache[key] = torch.tensor(key, dtype=torch.int64, device=self.device)
        return self.cache[key]


def channels_last_convolutions(module: nn.Module) -> None:
    """Channels-last weights for the 2-D convolutions only (tensor-core friendly NHWC kernels on CUDA).

    `module.to(memory_format=torch.channels_last)` on a whole network also reaches 5-D weights (ModelScope's
    temporal `Conv3d`s) and raises "required rank 4 tensor"; the 3-D ones keep their layout."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            # torch's stubs omit `Module.to`'s `memory_format` keyword, which it documents and accepts.
            layer.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


class TorchBackend:
    """Runs the PyTorch modules directly; the reference every other backend is checked against."""

    name = "torch"

    def __init__(
        self,
        components: ModelComponents,
        compile_unet: bool = False,
        channels_last: bool | None = None,
        feed_forward_chunk: int | None = FEED_FORWARD_CHUNK_TOKENS,
    ):
        """The modules that export writes to ONNX (the `NETWORKS` table), run as they are. `channels_last` (default:
        on CUDA) suits tensor-core convolutions; `compile_unet` runs the UNet through `torch.compile` (Inductor
        kernels, CUDA graphs on GPU), paid for once by the first call at each shape; `feed_forward_chunk` runs the
        UNet's feed-forward networks that many tokens at a time (None: all at once)."""
        self.card = ModelCard.from_components(components)
        self.text_encoder = NETWORKS["text_encoder"].build(components)
        self.unet = NETWORKS["unet"].build(components)
        self.vae = NETWORKS["vae_decoder"].build(components)
        self.vae_encoder = NETWORKS["vae_encoder"].build(components)  # video editing's; over the same VAE
        # Guided video's step, over the same UNet module (weights and memory savings shared).
        self.unet_controlnet = NETWORKS["unet_controlnet"].build(components) if components.controlnet else None
        if feed_forward_chunk:
            chunk_feed_forward(self.unet, feed_forward_chunk)
        self.device = components.unet.device  # the UNet the network wraps (`self.unet.unet`)
        self.dtype = components.unet.dtype
        if channels_last if channels_last is not None else self.device.type == "cuda":
            channels_last_convolutions(self.unet)
            channels_last_convolutions(self.vae)
        self.timesteps = DeviceScalars(self.device)
        self.splits: dict[int, tuple[CachingUNet, CachedUNet]] = {}  # fast mode's, by branch; made when first used
        self.run_unet: Callable[..., Any] = self.unet
        if compile_unet:
            # On GPU, CUDA graphs remove the per-kernel launch cost; autotuning would cost minutes per shape.
            mode = "reduce-overhead" if self.device.type == "cuda" else "default"
            self.run_unet = torch.compile(self.unet, mode=mode, dynamic=False)

    @property
    def placement(self) -> dict[str, Any]:
        return {"device": str(self.device)}

    @torch.inference_mode()
    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids.to(self.device))

    @torch.inference_mode()
    def predict_noise(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        return self.run_unet(sample, self.timesteps.get(timestep), encoder_hidden_states)

    @torch.inference_mode()
    def predict_noise_guided(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        control: torch.Tensor,
        controlnet_scale: torch.Tensor,
    ) -> torch.Tensor:
        assert self.unet_controlnet is not None, "the pipeline runs guided video only with a ControlNet"
        return self.unet_controlnet(
            sample, self.timesteps.get(timestep), encoder_hidden_states, control, controlnet_scale
        )

    def _split(self, branch: int) -> tuple[CachingUNet, CachedUNet]:
        """Fast mode's two modules for a branch, over the same UNet (weights, memory savings and layout shared)."""
        if branch not in self.splits:
            self.splits[branch] = (CachingUNet(self.unet, branch), CachedUNet(self.unet, branch))
        return self.splits[branch]

    @torch.inference_mode()
    def predict_noise_caching(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor, branch: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self._split(branch)[0](sample, self.timesteps.get(timestep), encoder_hidden_states)

    @torch.inference_mode()
    def predict_noise_cached(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        feature: torch.Tensor,
        branch: int,
    ) -> torch.Tensor:
        return self._split(branch)[1](sample, self.timesteps.get(timestep), encoder_hidden_states, feature)

    @torch.inference_mode()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae(latents)

    @torch.inference_mode()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.vae_encoder(images)
