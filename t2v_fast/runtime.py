"""The backend protocol, and the choice of a backend for a model.

The pipeline owns what is the same for every backend (tokenizer, scheduler, the family's loop); a backend owns the
networks and runs them by name: encode text, predict noise, decode latents. `open_backend` decides which backend
class runs a model name (a preset, a diffusers folder or hub id, or an engine directory).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from t2v_fast.core.choices import BACKENDS
from t2v_fast.core.engine_dir import EngineDir
from t2v_fast.core.models import ModelCard, load_components, read_config, scheduler_from_config
from t2v_fast.errors import UserError


class ModelBackend(Protocol):
    """The three calls the denoising loop makes; every backend implements exactly these."""

    name: str
    card: ModelCard
    device: torch.device  # where the pipeline keeps the tensors it passes in and gets back
    dtype: torch.dtype

    @property
    def placement(self) -> dict[str, Any]:
        """Where the networks really run, for the sidecar: at least `device`, and e.g. execution providers."""

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token ids `(n, tokens)` -> text embeddings `(n, tokens, dim)`."""

    def predict_noise(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        """Latents `(videos, frames, C, h, w)`, a scalar timestep and per-video text embeddings -> noise, same shape.
        The arguments are the UNet network's inputs by name (`t2v_fast.core.networks.NETWORKS`), as every backend
        binds them."""

    def predict_noise_caching(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor, branch: int
    ) -> tuple[torch.Tensor, Any]:
        """Fast mode's full step: `predict_noise`'s noise, and the feature `branch` caches (kept by the backend's
        own means; the pipeline only hands it back to `predict_noise_cached`)."""

    def predict_noise_cached(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        feature: Any,
        branch: int,
    ) -> torch.Tensor:
        """Fast mode's cached step: the noise from the UNet's shallow branch and a full step's feature."""

    def predict_noise_guided(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        control: torch.Tensor,
        controlnet_scale: torch.Tensor,
    ) -> torch.Tensor:
        """Guided video's step (`unet_controlnet`): `predict_noise`'s inputs, control maps `(videos, frames, 3, H, W)`
        in [0, 1] laid out as the latents, and the ControlNet's scale (a 0-d tensor)."""

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Denoised latents `(n, C, h, w)` -> images `(n, 3, H, W)` in [-1, 1]."""

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Video editing's input frames `(n, 3, H, W)` in [-1, 1] -> their latents `(n, C, h, w)` (`vae_encoder`)."""


def open_backend(
    model: str,
    *,
    kind: str,
    backend: str = "torch",
    device: str | None = None,
    dtype: str | None = None,
    providers: list[str] | None = None,
    compile_unet: bool = False,
    cuda_graph: bool = False,
    torch_options: dict[str, Any] | None = None,
    controlnet: str | None = None,
) -> tuple[ModelBackend, Any, Any]:
    """The backend that runs `model` (of `kind` "preset", "diffusers" or "engines"), with the model's tokenizer and
    scheduler: the pipeline owns those, the backend the networks.

    torch runs a preset, a folder or hub id, or an engine directory's source model; onnxruntime and tensorrt run an
    engine directory. `device` defaults to cuda when available (onnxruntime: the device of its first execution
    provider), `dtype` to float16 on GPU and float32 on CPU (for tensorrt it selects the engines' precision; default:
    the export's). `providers` selects ONNX Runtime execution providers; `compile_unet` runs the torch backend's
    UNet through `torch.compile`; `cuda_graph` replays ONNX Runtime's UNet from CUDA graphs (CUDA execution
    provider); `torch_options` are further `TorchBackend` options, e.g. its memory savings
    (`{"feed_forward_chunk": None}`: the feed-forward networks in one call). `controlnet`: a ControlNet preset,
    folder or hub id beside the model, for guided video. An engine directory exported with one (`t2v-fast export
    --controlnet`) brings its own, which the torch backend loads too; on every backend, asking one for another
    ControlNet is refused, and so is asking an export without one for any.
    """
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; available: {', '.join(BACKENDS)}")
    runner: ModelBackend
    exported = EngineDir.load(model, verify_hashes=False) if kind == "engines" else None
    if exported is not None:  # the graphs hold the ControlNet they were exported with: any asked for must be it
        controlnet = exported.controlnet_for(controlnet)
    if backend == "torch":
        from t2v_fast.backends.torch import TorchBackend

        if exported is not None:
            model = exported.model_id
        components = load_components(model, device=device, dtype=dtype, controlnet=controlnet)
        runner = TorchBackend(components, compile_unet=compile_unet, **(torch_options or {}))
        return runner, components.tokenizer, components.scheduler
    if kind != "engines":
        guided = " --controlnet CONTROLNET" if controlnet is not None else ""
        raise UserError(
            f"backend {backend!r} runs an engine directory, and {model!r} is not one (no engine.json);"
            f" create one with: t2v-fast export MODEL{guided} --out DIR"
        )
    engine_dir: EngineDir
    if backend == "onnxruntime":
        from t2v_fast.backends.onnxruntime import OnnxRuntimeBackend

        engine_dir = EngineDir.load(model)  # the ONNX files are what runs: verify them
        runner = OnnxRuntimeBackend(engine_dir, providers=providers, device=device, cuda_graph=cuda_graph)
    else:
        from t2v_fast.backends.tensorrt import TensorRTBackend

        # The engines are what runs: they are checked against engine.json as they load, the ONNX is not re-read.
        engine_dir = EngineDir.load(model, verify_hashes=False)
        precision = {None: None, "float32": "fp32", "float16": "fp16"}.get(dtype)
        if dtype is not None and precision is None:
            raise UserError(f"TensorRT engines are fp32 or fp16 (their export's precision), not {dtype}")
        runner = TensorRTBackend(engine_dir, device=device, precision=precision)
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(engine_dir.path / "tokenizer")
    scheduler = scheduler_from_config(read_config(engine_dir.path, "scheduler"), engine_dir.card.family_record)
    return runner, tokenizer, scheduler
