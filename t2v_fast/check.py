"""`t2v-fast check`: every backend available here against PyTorch, component by component, on the same inputs.

Each backend is called through the pipeline's own interface (encode_text, predict_noise, decode_latents), so what is
checked is exactly what generation runs. The reference is the source model in float32 on the CPU, after checking that
its weights are the ones the engine directory was exported from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .engine_dir import COMPONENTS, EngineDir
from .errors import UserError
from .models import load_components
from .runtime import ModelBackend, OnnxRuntimeBackend, TorchBackend

# Absolute tolerances. fp32 graphs differ from PyTorch only by kernel accumulation order; fp16 graphs by rounding.
DEFAULT_TOLERANCES = {
    "fp32": {"text_encoder": 1e-4, "unet": 1e-4, "vae_decoder": 1e-4},
    "fp16": {"text_encoder": 2e-2, "unet": 2e-2, "vae_decoder": 2e-2},
}


@dataclass(frozen=True)
class ComponentResult:
    backend: str
    component: str
    max_abs_error: float
    mean_abs_error: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.max_abs_error <= self.tolerance


def _component_calls(engine_dir: EngineDir, seed: int) -> dict[str, Callable[[ModelBackend], torch.Tensor]]:
    """One call per component, on fixed random inputs of the export's shapes."""
    info, settings = engine_dir.model_info, engine_dir.manifest["export"]
    size = info["native_size"]
    latent_h = (settings["height"] or size) // info["vae_scale_factor"]
    latent_w = (settings["width"] or size) // info["vae_scale_factor"]
    videos, frames = 2 * settings["videos"], settings["frames"]
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 500, (videos, info["text_max_length"]), generator=generator)
    sample = torch.randn((videos, frames, info["latent_channels"], latent_h, latent_w), generator=generator)
    text = torch.randn((videos, info["text_max_length"], info["text_dim"]), generator=generator)
    latents = torch.randn((min(frames, 8), info["latent_channels"], latent_h, latent_w), generator=generator)
    timestep = torch.tensor(801)

    def cast(backend: ModelBackend, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(backend.device, backend.dtype)

    return {
        "text_encoder": lambda b: b.encode_text(ids),
        "unet": lambda b: b.predict_noise(cast(b, sample), timestep, cast(b, text)),
        "vae_decoder": lambda b: b.decode_latents(cast(b, latents)),
    }


def available_backends(engine_dir: EngineDir) -> tuple[list[ModelBackend], dict[str, str]]:
    """Backends to check, and for each one that cannot run here, why."""
    backends: list[ModelBackend] = []
    skipped: dict[str, str] = {}
    try:
        backends.append(OnnxRuntimeBackend(engine_dir))
    except ImportError as error:
        skipped["onnxruntime"] = f"onnxruntime is not installed ({error}); pip install 't2v-fast[onnx]'"
    try:
        from .tensorrt_backend import TensorRTBackend

        backends.append(TensorRTBackend(engine_dir))
    except UserError as error:
        skipped["tensorrt"] = str(error)
    return backends, skipped


def check_engine_dir(
    path: str, tolerances: dict[str, float] | None = None, seed: int = 0
) -> tuple[list[ComponentResult], dict[str, str]]:
    engine_dir = EngineDir.load(path)
    components = load_components(engine_dir.source["model_id"], device="cpu", dtype="float32")
    if components.weights_sha256 != engine_dir.source["weights_sha256"]:
        raise UserError(
            f"model {engine_dir.source['model_id']!r} no longer has the weights {path} was exported from"
            " (weights hash mismatch); export again"
        )
    reference = TorchBackend(components)
    limits = {**DEFAULT_TOLERANCES[engine_dir.manifest["export"]["dtype"]], **(tolerances or {})}
    unknown = set(limits) - set(COMPONENTS)
    if unknown:
        raise UserError(
            f"unknown component(s) in tolerances: {', '.join(sorted(unknown))}; use {', '.join(COMPONENTS)}"
        )
    calls = _component_calls(engine_dir, seed)
    expected = {name: call(reference).float() for name, call in calls.items()}
    backends, skipped = available_backends(engine_dir)
    results = []
    for backend in backends:
        for name, call in calls.items():
            error = (call(backend).float().cpu() - expected[name]).abs()
            results.append(ComponentResult(backend.name, name, error.max().item(), error.mean().item(), limits[name]))
    return results, skipped


def format_report(results: list[ComponentResult], skipped: dict[str, str]) -> str:
    lines = [f"{'backend':<12} {'component':<13} {'max abs err':>12} {'mean abs err':>13} {'tolerance':>10}  result"]
    for r in results:
        errors = f"{r.max_abs_error:>12.3e} {r.mean_abs_error:>13.3e} {r.tolerance:>10.1e}"
        lines.append(f"{r.backend:<12} {r.component:<13} {errors}  {'pass' if r.passed else 'FAIL'}")
    lines += [f"{name}: not checked: {reason}" for name, reason in skipped.items()]
    return "\n".join(lines)
