"""Export the text encoder, the video UNet (with cross-frame attention) and the VAE decoder to ONNX.

Every axis that can vary at run time is a named dynamic axis of the graph's inputs: text batch, videos × guidance,
frames per video, latent height and width, decoded images. The frame count is never a constant.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.export import Dim
from tqdm.auto import tqdm

from . import __version__
from .attention_plugin import VideoUNet
from .engine_dir import ENGINE_JSON, FORMAT_VERSION, EngineDir, file_sha256
from .errors import UserError
from .models import ModelComponents, ModelInfo, load_components
from .runtime import TextEncoder, VaeDecoder

EXPORT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
ONNX_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.int64: "int64"}


@dataclass(frozen=True)
class ExportSettings:
    """Example shapes traced at export (the graph stays dynamic) and the exported precision."""

    frames: int = 8
    height: int | None = None
    width: int | None = None
    videos: int = 1
    dtype: str = "fp32"
    opset: int = 18


@dataclass(frozen=True)
class ComponentExport:
    name: str
    module: nn.Module
    inputs: dict[str, torch.Tensor]
    dynamic: dict[str, dict[int, Dim]]
    output: str
    output_axes: dict[int, str]
    config: dict[str, Any]


def _component_exports(
    components: ModelComponents, settings: ExportSettings, dtype: torch.dtype
) -> list[ComponentExport]:
    info = ModelInfo.from_components(components)
    height = (settings.height or info.native_size) // info.vae_scale_factor
    width = (settings.width or info.native_size) // info.vae_scale_factor
    # torch.export specialises axes whose example size is 0 or 1, so every example size is at least 2.
    videos, frames = max(2 * settings.videos, 2), max(settings.frames, 2)
    text_dim = components.text_encoder.config.hidden_size
    batch, images = Dim("batch", min=1, max=1024), Dim("images", min=1, max=1024)
    videos_axis, frames_axis = Dim("videos", min=1, max=1024), Dim("frames", min=1, max=4096)
    latent_height, latent_width = Dim("latent_height", min=2, max=1024), Dim("latent_width", min=2, max=1024)
    generator = torch.Generator().manual_seed(0)
    latent = (info.latent_channels, height, width)
    return [
        ComponentExport(
            name="text_encoder",
            module=TextEncoder(components.text_encoder),
            inputs={"input_ids": torch.randint(0, 500, (videos, info.text_max_length), generator=generator)},
            dynamic={"input_ids": {0: batch}},
            output="text_embeddings",
            output_axes={0: "batch"},
            config=components.text_encoder.config.to_dict(),
        ),
        ComponentExport(
            name="unet",
            module=VideoUNet(components.unet),
            inputs={
                "sample": torch.randn((videos, frames, *latent), generator=generator, dtype=dtype),
                "timestep": torch.tensor(801),
                "encoder_hidden_states": torch.randn(
                    (videos, info.text_max_length, text_dim), generator=generator, dtype=dtype
                ),
            },
            dynamic={
                "sample": {0: videos_axis, 1: frames_axis, 3: latent_height, 4: latent_width},
                "timestep": {},
                "encoder_hidden_states": {0: videos_axis},
            },
            output="noise",
            output_axes={0: "videos", 1: "frames", 3: "latent_height", 4: "latent_width"},
            config=dict(components.unet.config),
        ),
        ComponentExport(
            name="vae_decoder",
            module=VaeDecoder(components.vae),
            inputs={"latents": torch.randn((frames, *latent), generator=generator, dtype=dtype)},
            dynamic={"latents": {0: images, 2: latent_height, 3: latent_width}},
            output="images",
            output_axes={0: "images", 2: "height", 3: "width"},
            config=dict(components.vae.config),
        ),
    ]


def _describe(tensor: torch.Tensor, name: str, axes: dict[int, str]) -> dict[str, Any]:
    shape = [axes.get(i, size) for i, size in enumerate(tensor.shape)]
    return {"name": name, "dtype": ONNX_DTYPES[tensor.dtype], "shape": shape}


def _axis_ranges(part: ComponentExport) -> dict[str, list[int]]:
    """Range of every dynamic axis the graph was exported for; TensorRT profiles narrow these at build time."""
    return {dim.__name__: [dim.min, dim.max] for axes in part.dynamic.values() for dim in axes.values()}


def _export_component(part: ComponentExport, folder: Path, opset: int) -> dict[str, Any]:
    import onnx

    path = folder / f"{part.name}.onnx"
    started = time.perf_counter()
    with torch.no_grad(), _quiet_exporter():
        program = torch.onnx.export(
            part.module.eval(),
            tuple(part.inputs.values()),
            input_names=list(part.inputs),
            output_names=[part.output],
            dynamic_shapes=tuple(part.dynamic.values()),
            opset_version=opset,
            dynamo=True,
            optimize=True,  # onnxscript's optimiser: constant folding and dead-code removal
            verbose=False,
        )
        expected = part.module(*part.inputs.values())
    # Protobuf cannot hold 2 GiB: the exporter moves large models' weights to `NAME.onnx.data` by its own threshold,
    # so we record whichever files it wrote.
    program.save(str(path))
    # Shape inference through the path API, which also works for models with external data.
    onnx.shape_inference.infer_shapes_path(str(path), str(path))
    data = path.with_name(path.name + ".data")
    external = data.is_file()
    files = [path, data] if external else [path]
    return {
        "file": path.name,
        "external_data": files[1].name if external else None,
        "sha256": file_sha256(*files),
        "bytes": sum(f.stat().st_size for f in files),
        "export_seconds": round(time.perf_counter() - started, 2),
        "inputs": [
            _describe(t, n, {a: d.__name__ for a, d in part.dynamic[n].items()}) for n, t in part.inputs.items()
        ],
        "outputs": [_describe(expected, part.output, part.output_axes)],
        "axis_ranges": _axis_ranges(part),
        "config": _jsonable(part.config),
    }


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Hide the exporter's harmless notes (no torchvision ops, pytree deprecations, axis renames)."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.filterwarnings("ignore", message=".*axis name.*will not be used", category=UserWarning)
            yield
    finally:
        registration.setLevel(level)


def _jsonable(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v if isinstance(v, (str, int, float, bool, list, type(None))) else str(v) for k, v in config.items()}


def tool_versions() -> dict[str, str]:
    import diffusers
    import onnx
    import transformers

    return {
        "t2v_fast": __version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
    }


def export_model(model: str, out: str | Path, settings: ExportSettings, progress: bool = True) -> EngineDir:
    """Export `model` (preset, folder or hub id) into the engine directory `out` and write its `engine.json`."""
    if settings.dtype not in EXPORT_DTYPES:
        raise UserError(f"invalid export dtype {settings.dtype!r}; choose one of: {', '.join(EXPORT_DTYPES)}")
    if settings.frames < 1 or settings.videos < 1:
        raise UserError("frames and videos must be >= 1")
    out = Path(out)
    if (out / ENGINE_JSON).exists():
        raise UserError(f"{out} already holds an export; choose another folder or delete it")
    dtype = EXPORT_DTYPES[settings.dtype]
    components = load_components(model, device="cpu", dtype=dtype)
    info = ModelInfo.from_components(components)
    for name, value in (("height", settings.height), ("width", settings.width)):
        if value is not None and value % info.size_multiple:
            raise UserError(f"{name} must be a multiple of {info.size_multiple}, got {value}")
    out.mkdir(parents=True, exist_ok=True)
    components.tokenizer.save_pretrained(out / "tokenizer")
    components.scheduler.save_pretrained(out / "scheduler")

    exported = {}
    for part in tqdm(
        _component_exports(components, settings, dtype), desc="exporting", unit="model", disable=not progress
    ):
        exported[part.name] = _export_component(part, out, settings.opset)
    engine_dir = EngineDir(
        out,
        {
            "format_version": FORMAT_VERSION,
            "source": {"model_id": model, "weights_sha256": components.weights_sha256},
            "model_info": asdict(info),
            "export": asdict(settings),
            "cleanup": ["onnxscript optimizer (constant folding, dead code)", "onnx shape inference"],
            "tool_versions": tool_versions(),
            "components": exported,
            "engines": {},
        },
    )
    engine_dir.save()
    return engine_dir
