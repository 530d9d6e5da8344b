"""`t2v-fast check`: every backend available here against PyTorch, component by component, on the same inputs.

Each backend is called through the pipeline's own interface (encode_text, predict_noise, decode_latents, video
editing's encode_images where the export has `vae_encoder`, fast mode's predict_noise_caching and predict_noise_cached
where it has their graphs, and guided video's predict_noise_guided where it has `unet_controlnet`), so what is checked
is exactly what generation runs. The reference is the source model (with the export's ControlNet) in float32 on the
CPU, after checking that its weights are the ones the engine directory was exported from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from t2v_fast.backends.onnxruntime import OnnxRuntimeBackend
from t2v_fast.backends.torch import TorchBackend
from t2v_fast.core.deepcache import EXPORTED_BRANCH
from t2v_fast.core.engine_dir import EngineDir
from t2v_fast.core.models import load_components
from t2v_fast.core.networks import DECODE_BATCH_SIZE, NETWORKS, dims
from t2v_fast.core.profiles import guidance_conditions, unet_frame_counts
from t2v_fast.errors import UserError
from t2v_fast.runtime import ModelBackend

# Tolerances on the largest error relative to the reference output's RMS (so one number means the same for the
# text encoder's embeddings, the UNet's unit-variance noise and the VAE's [-1, 1] images), by the precision the
# backend computes in. fp32: kernel accumulation order only; TensorRT builds fp32 engines with TF32 off (10-bit
# mantissas would be ~1e-3), so fp32 means fp32. fp16: half-precision rounding (2^-11 per operation) accumulated
# through the network; the UNet's matches the project's own full-size test (sd15 fp16 graph against the fp32
# UNet: 5e-2 on an output of RMS ~1), and so does the VAE decoder's (as deep: torch's own fp16 decoder reaches 2.0e-2
# against fp32 on modelscope-tiny-random); the text encoder is shallower. Fast mode's graphs are the UNet's layers
# (the cached one fewer of them): the UNet's tolerance; so is guided video's, the UNet with the ControlNet's residuals
# (a network as deep as its encoder half) added in. Video editing's VAE encoder mirrors the decoder: the decoder's.
UNETS = ("unet", "unet_caching", "unet_cached", "unet_controlnet")
VAES = ("vae_decoder", "vae_encoder")
DEFAULT_TOLERANCES = {
    "fp32": {"text_encoder": 1e-4, **dict.fromkeys(VAES, 1e-4), **dict.fromkeys(UNETS, 1e-4)},
    "fp16": {"text_encoder": 2e-2, **dict.fromkeys(VAES, 5e-2), **dict.fromkeys(UNETS, 5e-2)},
}


@dataclass(frozen=True)
class ComponentResult:
    backend: str
    component: str
    case: str
    max_abs_error: float
    mean_abs_error: float
    reference_rms: float
    tolerance: float  # on `relative_error`

    @property
    def relative_error(self) -> float:
        """The largest error as a fraction of the reference output's RMS."""
        return self.max_abs_error / max(self.reference_rms, 1e-12)

    @property
    def passed(self) -> bool:
        return self.relative_error <= self.tolerance


def compare(
    backend: str, component: str, case: str, actual: torch.Tensor, expected: torch.Tensor, tolerance: float
) -> ComponentResult:
    """One backend's output against the float32 reference's, judged relative to the reference's RMS."""
    error = (actual.float().cpu() - expected).abs()
    rms = expected.float().pow(2).mean().sqrt().item()
    return ComponentResult(backend, component, case, error.max().item(), error.mean().item(), rms, tolerance)


@dataclass(frozen=True)
class Case:
    component: str
    name: str
    call: Callable[[ModelBackend], torch.Tensor]


def _cases(engine_dir: EngineDir, seed: int, reference: TorchBackend) -> list[Case]:
    """Calls of every shape generation makes, on fixed random inputs (shapes from the network table): the text batch
    of a guided call (with a repeated prompt) and of one prompt; the UNet with guidance (its guider's batch,
    `guidance_conditions`) at each frame count the family sends (`unet_frame_counts`: all frames, and Text2Video-Zero's
    first frame alone) and without guidance at all frames; a full and a one-image VAE batch, through the decoder and
    (video editing) the encoder. With fast mode's graphs, also a guided call at all
    frames of each: the full step's noise and feature, and the cached step on the feature the reference cached. With
    guided video's `unet_controlnet`, its calls at all frames with and without guidance (control maps in [0, 1],
    the ControlNet's scale 1)."""
    info, settings = engine_dir.card, engine_dir.export_settings
    videos, frames = settings.videos, settings.frames
    assert frames is not None  # an export records its resolved frame count
    images = min(frames * videos, DECODE_BATCH_SIZE)
    guided_batch = guidance_conditions(info) * videos

    def inputs(component: str, batch: int, count: int, decoded: int) -> dict[str, torch.Tensor]:
        height, width = settings.height or info.native_size, settings.width or info.native_size
        shapes = dims(info, videos=batch, frames=count, height=height, width=width, images=decoded)
        generator = torch.Generator().manual_seed(seed)
        return NETWORKS[component].sample_inputs(shapes, torch.float32, generator)

    def cast(backend: ModelBackend, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(backend.device, backend.dtype)

    def text(batch: int) -> Callable[[ModelBackend], torch.Tensor]:
        ids = inputs("text_encoder", batch, 1, 1)["input_ids"]
        ids[-1] = ids[0]  # a repeated prompt within the batch
        return lambda b: b.encode_text(ids)

    def unet(batch: int, count: int) -> Callable[[ModelBackend], torch.Tensor]:
        made = inputs("unet", batch, count, 1)
        sample, timestep, hidden = made["sample"], made["timestep"], made["encoder_hidden_states"]
        return lambda b: b.predict_noise(cast(b, sample), timestep, cast(b, hidden))

    def vae(decoded: int) -> Callable[[ModelBackend], torch.Tensor]:
        latents = inputs("vae_decoder", 1, 1, decoded)["latents"]
        return lambda b: b.decode_latents(cast(b, latents))

    def encoder(encoded: int) -> Callable[[ModelBackend], torch.Tensor]:
        pixels = inputs("vae_encoder", 1, 1, encoded)["images"]
        return lambda b: b.encode_images(cast(b, pixels))

    def guided(batch: int, count: int) -> Callable[[ModelBackend], torch.Tensor]:
        made = inputs("unet_controlnet", batch, count, 1)
        sample, timestep, hidden = made["sample"], made["timestep"], made["encoder_hidden_states"]
        control, scale = made["control"], made["controlnet_scale"]
        return lambda b: b.predict_noise_guided(
            cast(b, sample), timestep, cast(b, hidden), cast(b, control), cast(b, scale)
        )

    cases = [
        Case("text_encoder", f"batch={guided_batch}", text(guided_batch)),
        Case("text_encoder", "batch=1", text(1)),
        *(
            Case("unet", f"frames={count},batch={guided_batch}", unet(guided_batch, count))
            for count in sorted(unet_frame_counts(info, frames), reverse=True)
        ),
        Case("unet", f"frames={frames},batch={videos}", unet(videos, frames)),
        Case("vae_decoder", f"images={images}", vae(images)),
        Case("vae_decoder", "images=1", vae(1)),
    ]
    if "vae_encoder" in engine_dir.networks:
        cases += [Case("vae_encoder", f"images={images}", encoder(images)), Case("vae_encoder", "images=1", encoder(1))]
    if "unet_controlnet" in engine_dir.networks:
        cases += [
            Case("unet_controlnet", f"frames={frames},batch={guided_batch}", guided(guided_batch, frames)),
            Case("unet_controlnet", f"frames={frames},batch={videos}", guided(videos, frames)),
        ]
    if "unet_caching" not in engine_dir.networks:
        return cases
    made = inputs("unet", guided_batch, frames, 1)
    sample, timestep, hidden = made["sample"], made["timestep"], made["encoder_hidden_states"]
    feature = reference.predict_noise_caching(sample, timestep, hidden, EXPORTED_BRANCH)[1]

    def caching(output: int) -> Callable[[ModelBackend], torch.Tensor]:
        return lambda b: b.predict_noise_caching(cast(b, sample), timestep, cast(b, hidden), EXPORTED_BRANCH)[output]

    def cached(b: ModelBackend) -> torch.Tensor:
        return b.predict_noise_cached(cast(b, sample), timestep, cast(b, hidden), cast(b, feature), EXPORTED_BRANCH)

    shape = f"frames={frames},batch={guided_batch}"
    return [
        *cases,
        Case("unet_caching", f"noise,{shape}", caching(0)),
        Case("unet_caching", f"feature,{shape}", caching(1)),
        Case("unet_cached", shape, cached),
    ]


def available_backends(engine_dir: EngineDir) -> tuple[list[ModelBackend], dict[str, str]]:
    """Backends to check, and for each one that cannot run here, why."""
    backends: list[ModelBackend] = []
    skipped: dict[str, str] = {}
    try:
        backends.append(OnnxRuntimeBackend(engine_dir))
    except ImportError as error:
        skipped["onnxruntime"] = f"onnxruntime is not installed ({error}); pip install 't2v-fast[onnx]'"
    except UserError as error:  # e.g. graphs optimised for the CUDA provider, on a machine without it
        skipped["onnxruntime"] = str(error)
    try:
        from t2v_fast.backends.tensorrt import TensorRTBackend

        backends.append(TensorRTBackend(engine_dir))
    except UserError as error:
        skipped["tensorrt"] = str(error)
    return backends, skipped


def precision_of(backend: ModelBackend) -> str:
    """The precision a backend computes in (for TensorRT, its engines'; for ONNX Runtime, its graphs')."""
    return "fp16" if backend.dtype == torch.float16 else "fp32"


def check_engine_dir(
    path: str, tolerances: dict[str, float] | None = None, seed: int = 0
) -> tuple[list[ComponentResult], dict[str, str]]:
    engine_dir = EngineDir.load(path)
    card = engine_dir.card
    components = load_components(engine_dir.model_id, device="cpu", dtype="float32", controlnet=card.controlnet or None)
    if components.weights_sha256 != engine_dir.weights_sha256:
        raise UserError(
            f"model {engine_dir.model_id!r} no longer has the weights {path} was exported from"
            " (weights hash mismatch); export again"
        )
    if card.controlnet and card.controlnet_sha256 and components.controlnet_sha256 != card.controlnet_sha256:
        raise UserError(
            f"ControlNet {card.controlnet!r} no longer has the weights {path} was exported with"
            " (weights hash mismatch); export again"
        )
    unknown = set(tolerances or {}) - set(engine_dir.networks)
    if unknown:
        raise UserError(
            f"unknown component(s) in tolerances: {', '.join(sorted(unknown))}; use {', '.join(engine_dir.networks)}"
        )
    reference = TorchBackend(components)
    cases = _cases(engine_dir, seed, reference)
    expected = [case.call(reference).float() for case in cases]
    backends, skipped = available_backends(engine_dir)
    results = []
    for backend in backends:
        limits = {**DEFAULT_TOLERANCES[precision_of(backend)], **(tolerances or {})}
        for case, wanted in zip(cases, expected, strict=True):
            actual = case.call(backend)
            results.append(compare(backend.name, case.component, case.name, actual, wanted, limits[case.component]))
    return results, skipped


def format_report(results: list[ComponentResult], skipped: dict[str, str]) -> str:
    header = (
        f"{'backend':<12} {'component':<15} {'case':<26} {'max abs err':>12} {'mean abs err':>13}"
        f" {'ref RMS':>10} {'max/RMS':>10} {'tolerance':>10}"
    )
    lines = [f"{header}  result"]
    for r in results:
        errors = f"{r.max_abs_error:>12.3e} {r.mean_abs_error:>13.3e} {r.reference_rms:>10.3e}"
        judged = f"{r.relative_error:>10.3e} {r.tolerance:>10.1e}"
        lines.append(
            f"{r.backend:<12} {r.component:<15} {r.case:<26} {errors} {judged}  {'pass' if r.passed else 'FAIL'}"
        )
    lines.append("tolerance: on the largest error relative to the float32 reference's RMS (max/RMS)")
    lines += [f"{name}: not checked: {reason}" for name, reason in skipped.items()]
    return "\n".join(lines)
