"""Export the model's task's networks to ONNX (the text encoder, the video UNet with cross-frame attention, the VAE
decoder, and for video editing the VAE encoder), with `fast` fast mode's two UNet graphs (`t2v_fast.core.deepcache`),
and with a ControlNet guided video's step, the ControlNet and the UNet in one graph (`unet_controlnet`,
`t2v_fast.families.guided.controlnet`).

What is exported, with which inputs and dynamic axes, is the table in `t2v_fast.core.networks`: text batch, videos ×
guidance, frames per video, latent height and width, control maps' and input frames' height and width, decoded (or
encoded) images. The frame count is never a constant.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch.export import Dim
from tqdm.auto import tqdm

from t2v_fast._version import __version__
from t2v_fast.core.engine_dir import ENGINE_JSON, EngineDir, ExportSettings, file_sha256
from t2v_fast.core.models import ModelCard, ModelComponents, load_components
from t2v_fast.core.networks import (
    DECODE_BATCH_SIZE,
    FAST_NETWORKS,
    GUIDED_NETWORKS,
    NETWORKS,
    NetworkSpec,
    dims,
    model_dims,
)
from t2v_fast.core.profiles import guidance_conditions
from t2v_fast.errors import UserError

EXPORT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
# What an export can be optimised for beyond plain ONNX (`ExportSettings.optimized_for`).
OPTIMIZATIONS = ("onnxruntime-cuda",)


def example_frames(info: ModelCard) -> int:
    """The frame count an export is traced and profiled at when none is chosen: the family's default length, else
    (a length that is the input video's: video editing) its default chunk size, the frames of one UNet pass."""
    defaults = info.family_record.defaults
    return int(defaults["frames"] or defaults["chunk_size"])


def _example_dims(info: ModelCard, settings: ExportSettings) -> dict[str, int]:
    # torch.export specialises axes whose example size is 0 or 1, so every example size is at least 2.
    assert settings.frames is not None  # resolved by `export_model`
    return dims(
        info,
        videos=max(guidance_conditions(info) * settings.videos, 2),
        frames=max(settings.frames, 2),
        height=settings.height or info.native_size,
        width=settings.width or info.native_size,
        images=min(max(settings.frames, 2), DECODE_BATCH_SIZE),
    )


def _torch_dims(network: NetworkSpec) -> tuple[dict[int, Dim], ...]:
    """torch.export's `dynamic_shapes`: one `Dim` per axis name, shared by the inputs that have that axis."""
    ranges = network.axis_ranges()
    named = {axis: Dim(axis, min=low, max=high) for axis, (low, high) in ranges.items()}
    return tuple({i: named[axis] for i, axis in axes.items()} for axes in network.dynamic_axes().values())


def _export_component(
    network: NetworkSpec,
    components: ModelComponents,
    info: ModelCard,
    example: dict[str, int],
    dtype: torch.dtype,
    folder: Path,
    settings: ExportSettings,
) -> dict[str, Any]:
    import onnx

    path = folder / f"{network.name}.onnx"
    module = network.build(components).eval()
    device = next(module.parameters()).device
    inputs = {
        name: tensor.to(device)
        for name, tensor in network.sample_inputs(example, dtype, torch.Generator().manual_seed(0)).items()
    }
    started = time.perf_counter()
    with torch.no_grad(), _quiet_exporter():
        program = torch.onnx.export(
            _traced(module, inputs, network),
            tuple(inputs.values()),
            input_names=network.input_names,
            output_names=network.output_names,
            dynamic_shapes=_torch_dims(network),
            opset_version=settings.opset,
            dynamo=True,
            optimize=True,  # onnxscript's optimiser: constant folding and dead-code removal
            verbose=False,
        )
    assert program is not None  # only the legacy exporter (dynamo=False) returns None
    # Protobuf cannot hold 2 GiB: the exporter moves large models' weights to `NAME.onnx.data` by its own threshold,
    # so we record whichever files it wrote.
    program.save(str(path))
    # Shape inference through the path API, which also works for models with external data.
    onnx.shape_inference.infer_shapes_path(str(path), str(path))
    fused = {}
    if settings.optimized_for == "onnxruntime-cuda":
        from .ort_cuda import optimize_for_cuda

        fused = optimize_for_cuda(path, path, network.name, float16=settings.dtype == "fp16")
    io_dtypes = graph_io_dtypes(path)
    data = path.with_name(path.name + ".data")
    external = data.is_file()
    files = [path, data] if external else [path]
    fixed = model_dims(info)
    return {
        "file": path.name,
        "external_data": files[1].name if external else None,
        "sha256": file_sha256(*files),
        "bytes": sum(f.stat().st_size for f in files),
        "export_seconds": round(time.perf_counter() - started, 2),
        "inputs": [
            {"name": spec.name, "dtype": io_dtypes[spec.name], "shape": spec.describe(fixed)} for spec in network.inputs
        ],
        "outputs": [
            {"name": spec.name, "dtype": io_dtypes[spec.name], "shape": spec.describe(fixed)}
            for spec in network.outputs
        ],
        "axis_ranges": network.axis_ranges(),
        "config": _jsonable(network.config(components)),
        "fused_operators": fused,
    }


def _traced(module: torch.nn.Module, inputs: dict[str, torch.Tensor], network: NetworkSpec) -> Any:
    """The module traced by torch.export's non-strict mode (fake tensors: nothing runs), or the module itself where
    that tracing fails (e.g. diffusers' `batch >= 64` branch in the VAE's upsampler), left to torch.onnx's own
    strategies. torch.onnx's first strategy fails on our video UNet (a symbolic division), and its strict fallback
    costs three times this."""
    try:
        return torch.export.export(module, tuple(inputs.values()), dynamic_shapes=_torch_dims(network), strict=False)
    except Exception:  # torch.export raises many types (UserError, constraint violations, trace errors)
        return module


def graph_io_dtypes(path: Path) -> dict[str, str]:
    """Each input's and output's element type as the exported graph declares it, read from the file without its
    weights: the exporter traced the model with fake tensors, so no eager run (minutes for a full-size UNet on a CPU)
    is needed, and a graph converted to fp16 afterwards is described as it is."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return {
        value.name: onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).name
        for value in [*graph.input, *graph.output]
    }


NOISY_LOGGERS = ("torch.onnx._internal.exporter._registration", "torch.utils._sympy.interp")


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Hide the exporter's harmless notes (no torchvision ops, pytree deprecations, axis renames, and a symbolic
    division it retries another way while tracing the 3D UNet's temporal layers)."""
    loggers = [logging.getLogger(name) for name in NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.filterwarnings("ignore", message=".*axis name.*will not be used", category=UserWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _jsonable(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config as JSON: nested configs (the ControlNet's inside `unet_controlnet`'s) as objects, anything else
    JSON has no type for as its string."""
    return {key: _json_value(value) for key, value in config.items()}


def _json_value(value: Any) -> Any:
    if isinstance(value, Mapping):
        return _jsonable(value)
    return value if isinstance(value, (str, int, float, bool, list, type(None))) else str(value)


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


def export_model(
    model: str,
    out: str | Path,
    settings: ExportSettings,
    progress: bool = True,
    device: str = "cpu",
    controlnet: str | None = None,
) -> EngineDir:
    """Export `model` (preset, folder or hub id) into the engine directory `out` and write its `engine.json`.

    `device`: where the model is loaded and traced; on a GPU, an fp16 export never materialises fp16 weights on the
    CPU (whose half-precision kernels are slow or missing). The ONNX files do not depend on it. `controlnet` (a
    preset, a `ControlNetModel` folder or a hub id): also guided video's `unet_controlnet`, the ControlNet and the
    UNet in one graph; the card in `engine.json` records the ControlNet and its weights' hash."""
    if settings.dtype not in EXPORT_DTYPES:
        raise UserError(f"invalid export dtype {settings.dtype!r}; choose one of: {', '.join(EXPORT_DTYPES)}")
    if settings.optimized_for not in (None, *OPTIMIZATIONS):
        raise UserError(f"cannot optimise for {settings.optimized_for!r}; choose one of: {', '.join(OPTIMIZATIONS)}")
    if (settings.frames is not None and settings.frames < 1) or settings.videos < 1:
        raise UserError("frames and videos must be >= 1")
    out = Path(out)
    if (out / ENGINE_JSON).exists():
        raise UserError(f"{out} already holds an export; choose another folder or delete it")
    # ONNX Runtime's fusions match fp32 patterns: an export optimised for it is traced in fp32 and converted after.
    dtype = torch.float32 if settings.optimized_for else EXPORT_DTYPES[settings.dtype]
    components = load_components(model, device=device, dtype=dtype, controlnet=controlnet)
    info = ModelCard.from_components(components)
    settings = replace(settings, frames=settings.frames or example_frames(info))
    for name, value in (("height", settings.height), ("width", settings.width)):
        if value is not None and value % info.size_multiple:
            raise UserError(f"{name} must be a multiple of {info.size_multiple}, got {value}")
    out.mkdir(parents=True, exist_ok=True)
    components.tokenizer.save_pretrained(out / "tokenizer")
    components.scheduler.save_pretrained(out / "scheduler")

    example = _example_dims(info, settings)
    # Fast mode's graphs and guided video's come after the task's, traced at the same example shapes with the same
    # dynamic axes (guided video's control maps: the example's pixel size).
    names = [
        *info.task_record.networks,
        *(FAST_NETWORKS if settings.fast else ()),
        *(GUIDED_NETWORKS if components.controlnet is not None else ()),
    ]
    exported = {
        network.name: _export_component(network, components, info, example, dtype, out, settings)
        for network in tqdm([NETWORKS[name] for name in names], desc="exporting", unit="model", disable=not progress)
    }
    engine_dir = EngineDir.create(
        out,
        model,
        components.weights_sha256,
        info,
        settings,
        exported,
        cleanup=[
            "onnxscript optimizer (constant folding, dead code)",
            "onnx shape inference",
            *(
                [f"onnxruntime.transformers optimizer (CUDA fusions), saved as {settings.dtype}"]
                if settings.optimized_for
                else []
            ),
        ],
        tool_versions=tool_versions(),
    )
    engine_dir.save()
    return engine_dir
