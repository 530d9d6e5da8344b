"""Backends: the narrow model interface that the denoising loop talks to.

The pipeline owns what is the same for every backend (tokenizer, scheduler, the Text2Video-Zero loop); a backend
owns the three networks and runs them: encode text, predict noise, decode latents.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from .attention_plugin import VideoUNet
from .engine_dir import EngineDir
from .errors import UserError
from .models import ModelComponents, ModelInfo


class TextEncoder(nn.Module):
    """CLIP text encoder returning only the last hidden state, the one output the UNet consumes.

    The torch backend runs this module and `t2v-fast export` exports it, so both compute the same thing."""

    def __init__(self, text_encoder: nn.Module):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids, return_dict=False)[0]


class VaeDecoder(nn.Module):
    """VAE decoder taking the denoiser's latents, so the scaling factor is part of the exported graph too."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0]


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

    def __init__(self, components: ModelComponents, compile_unet: bool = False, channels_last: bool | None = None):
        """`channels_last` (default: on CUDA) suits tensor-core convolutions; `compile_unet` runs the UNet through
        `torch.compile` (Inductor kernels, CUDA graphs on GPU), paid for once by the first call at each shape."""
        self.info = ModelInfo.from_components(components)
        self.text_encoder = TextEncoder(components.text_encoder)
        self.unet = VideoUNet(components.unet)
        self.vae = VaeDecoder(components.vae)
        self.device = self.unet.unet.device
        self.dtype = self.unet.unet.dtype
        if channels_last if channels_last is not None else self.device.type == "cuda":
            self.unet.to(memory_format=torch.channels_last)
            self.vae.to(memory_format=torch.channels_last)
        self.run_unet = self.unet
        if compile_unet:
            # On GPU, CUDA graphs remove the per-kernel launch cost; autotuning would cost minutes per shape.
            mode = "reduce-overhead" if self.device.type == "cuda" else "default"
            self.run_unet = torch.compile(self.unet, mode=mode, dynamic=False)

    @torch.inference_mode()
    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids.to(self.device))

    @torch.inference_mode()
    def predict_noise(
        self, sample: torch.Tensor, timestep: torch.Tensor, text_embeddings: torch.Tensor
    ) -> torch.Tensor:
        return self.run_unet(sample, timestep.to(self.device), text_embeddings)

    @torch.inference_mode()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae(latents)


ORT_PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def onnxruntime_providers(requested: list[str] | None = None) -> list[str]:
    """Execution providers in order of preference among those this onnxruntime build has, or the requested ones."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if requested:
        missing = [p for p in requested if p not in available]
        if missing:
            raise UserError(
                f"onnxruntime providers not available here: {', '.join(missing)}; available: {', '.join(available)}"
            )
        return list(requested)
    return [p for p in ORT_PROVIDER_PREFERENCE if p in available]


class OnnxRuntimeBackend:
    """Runs the exported ONNX graphs with ONNX Runtime; tensors cross as NumPy arrays on the host."""

    name = "onnxruntime"

    def __init__(self, engine_dir: EngineDir, providers: list[str] | None = None):
        import onnxruntime as ort

        self.info = engine_dir.info
        self.providers = onnxruntime_providers(providers)
        self.dtype = {"float32": torch.float32, "float16": torch.float16}[_input_dtype(engine_dir, "unet", "sample")]
        self.device = torch.device("cpu")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.sessions = {
            name: ort.InferenceSession(str(engine_dir.onnx_path(name)), options, providers=self.providers)
            for name in ("text_encoder", "unet", "vae_decoder")
        }

    def _run(self, name: str, **inputs: torch.Tensor) -> torch.Tensor:
        feeds = {key: value.detach().cpu().numpy() for key, value in inputs.items()}
        return torch.from_numpy(self.sessions[name].run(None, feeds)[0])

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self._run("text_encoder", input_ids=input_ids.long())

    def predict_noise(
        self, sample: torch.Tensor, timestep: torch.Tensor, text_embeddings: torch.Tensor
    ) -> torch.Tensor:
        return self._run("unet", sample=sample, timestep=timestep.long(), encoder_hidden_states=text_embeddings)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return self._run("vae_decoder", latents=latents)


def _input_dtype(engine_dir: EngineDir, component: str, name: str) -> str:
    inputs = engine_dir.manifest["components"][component]["inputs"]
    return next(entry["dtype"] for entry in inputs if entry["name"] == name)


BACKENDS = ("torch", "onnxruntime", "tensorrt")
