"""From a model name to a pipeline or a model description: the one place that decides what a name refers to.

A name is an engine directory (it holds `engine.json`), a preset, or a diffusers folder / hub id; `describe_model`
(configs only, for validating a night's manifest) and `load_pipeline` (weights or graphs, for rendering) take the same
decision through `_kind`.
"""

from __future__ import annotations

from transformers import CLIPTokenizer

from t2v_fast.backends.onnxruntime import OnnxRuntimeBackend
from t2v_fast.backends.torch import TorchBackend
from t2v_fast.core.choices import BACKENDS
from t2v_fast.core.engine_dir import EngineDir
from t2v_fast.core.families import MODELSCOPE, TEXT2VIDEO_ZERO, Family, family_named, family_of_unet
from t2v_fast.core.models import ModelSpec, load_components, read_config, resolve_folder, scheduler_from_config
from t2v_fast.core.pipeline import VideoPipeline
from t2v_fast.core.presets import PRESETS, preset_configs, preset_scheduler, preset_tokenizer
from t2v_fast.errors import UserError
from t2v_fast.families.modelscope.pipeline import ModelScopePipeline
from t2v_fast.families.text2video_zero.pipeline import TextToVideoZeroPipeline
from t2v_fast.runtime import ModelBackend

# Each family's pipeline: the one loop of that family, over any backend.
PIPELINES: dict[str, type[VideoPipeline]] = {
    TEXT2VIDEO_ZERO.name: TextToVideoZeroPipeline,
    MODELSCOPE.name: ModelScopePipeline,
}


def _kind(model: str) -> str:
    if EngineDir.is_engine_dir(model):
        return "engines"
    return "preset" if model in PRESETS else "diffusers"


def describe_model(model: str) -> ModelSpec:
    """`ModelSpec` of a preset, a diffusers folder, a hub id or an engine directory, without loading weights."""
    kind = _kind(model)
    if kind == "engines":
        engine_dir = EngineDir.load(model, verify_hashes=False)
        scheduler = scheduler_from_config(
            read_config(engine_dir.path, "scheduler"), family_named(engine_dir.info.family)
        )
        return ModelSpec.from_info(
            engine_dir.info, scheduler, CLIPTokenizer.from_pretrained(engine_dir.path / "tokenizer")
        )
    if kind == "preset":
        configs = preset_configs(model)
        scheduler, tokenizer = preset_scheduler(configs), preset_tokenizer(configs)
    else:
        folder = resolve_folder(model)
        configs = {name: read_config(folder, name) for name in ("unet", "vae")}
        scheduler = scheduler_from_config(read_config(folder, "scheduler"), family_of_unet(configs["unet"]))
        tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    return ModelSpec.from_configs(model, configs["unet"], configs["vae"], scheduler, tokenizer)


def load_pipeline(
    model: str,
    backend: str = "torch",
    device: str | None = None,
    dtype: str | None = None,
    providers: list[str] | None = None,
    compile_unet: bool = False,
    cuda_graph: bool = False,
) -> VideoPipeline:
    """The model family's pipeline on `backend` for a model (preset, diffusers folder, hub id) or an engine directory.

    `torch` takes either (for an engine directory, the model it was exported from); `onnxruntime` and `tensorrt` run
    the exported graphs or built engines of an engine directory. `device` defaults to CUDA when available (for
    onnxruntime: the device of its first execution provider), `dtype` to float16 on GPU and float32 on CPU (for
    tensorrt it selects the engines' precision; default: the export's). `providers` selects ONNX Runtime execution
    providers; `compile_unet` runs the torch backend's UNet through `torch.compile`; `cuda_graph` replays ONNX
    Runtime's UNet from CUDA graphs (CUDA execution provider).
    """
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; available: {', '.join(BACKENDS)}")
    kind = _kind(model)
    if backend == "torch":
        if kind == "engines":
            model = EngineDir.load(model, verify_hashes=False).model_id
        components = load_components(model, device=device, dtype=dtype)
        runner = TorchBackend(components, compile_unet=compile_unet)
        return _pipeline(components.family, components.tokenizer, components.scheduler, runner)
    if kind != "engines":
        raise UserError(
            f"backend {backend!r} runs an engine directory, and {model!r} is not one (no engine.json);"
            f" create one with: t2v-fast export MODEL --out DIR"
        )
    if backend == "onnxruntime":
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
    family = family_named(engine_dir.info.family)
    tokenizer = CLIPTokenizer.from_pretrained(engine_dir.path / "tokenizer")
    scheduler = scheduler_from_config(read_config(engine_dir.path, "scheduler"), family)
    return _pipeline(family, tokenizer, scheduler, runner)


def _pipeline(family: Family, tokenizer: CLIPTokenizer, scheduler: object, runner: ModelBackend) -> VideoPipeline:
    return PIPELINES[family.name](tokenizer, scheduler, runner)
