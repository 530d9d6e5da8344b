"""From a model name to a pipeline or a model card: the one place that decides what a name refers to.

A name is an engine directory (it holds `engine.json`), a preset, or a diffusers folder / hub id; `describe_model`
(configs only, for validating a night's manifest before any weights load) and `load_pipeline` (weights or graphs,
for rendering) take the same decision through `_kind`. The backend is chosen by `t2v_fast.runtime.open_backend`.
"""

from __future__ import annotations

from typing import Any

from transformers import CLIPTokenizer

from t2v_fast.core.engine_dir import EngineDir
from t2v_fast.core.families import MODELSCOPE, TEXT2VIDEO_ZERO, TEXT_TO_VIDEO
from t2v_fast.core.models import (
    ModelCard,
    read_config,
    read_model_index,
    resolve_folder,
    scheduler_from_config,
)
from t2v_fast.core.pipeline import VideoPipeline
from t2v_fast.core.presets import PRESETS, preset_configs, preset_scheduler, preset_tokenizer
from t2v_fast.families.modelscope.pipeline import ModelScopePipeline
from t2v_fast.families.text2video_zero.pipeline import TextToVideoZeroPipeline
from t2v_fast.runtime import open_backend

# The pipeline of each (family, task): that family's loop for that task, over any backend.
PIPELINES: dict[tuple[str, str], type[VideoPipeline]] = {
    (TEXT2VIDEO_ZERO.name, TEXT_TO_VIDEO.name): TextToVideoZeroPipeline,
    (MODELSCOPE.name, TEXT_TO_VIDEO.name): ModelScopePipeline,
}


def _kind(model: str) -> str:
    if EngineDir.is_engine_dir(model):
        return "engines"
    return "preset" if model in PRESETS else "diffusers"


def describe_model(model: str) -> ModelCard:
    """The card of a preset, a diffusers folder, a hub id or an engine directory, from configs only, with its
    scheduler and tokenizer attached."""
    kind = _kind(model)
    if kind == "engines":
        engine_dir = EngineDir.load(model, verify_hashes=False)
        card = engine_dir.card
        scheduler = scheduler_from_config(read_config(engine_dir.path, "scheduler"), card.family_record)
        return card.with_runtime(scheduler, CLIPTokenizer.from_pretrained(engine_dir.path / "tokenizer"))
    if kind == "preset":
        configs = preset_configs(model)
        return ModelCard.from_configs(model, {}, configs, preset_scheduler(configs), preset_tokenizer(configs))
    folder = resolve_folder(model)
    configs = {name: read_config(folder, name) for name in ("unet", "vae", "text_encoder")}
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    card = ModelCard.from_configs(model, read_model_index(folder), configs, None, tokenizer)
    return card.with_runtime(scheduler_from_config(read_config(folder, "scheduler"), card.family_record), tokenizer)


def load_pipeline(model: str, backend: str = "torch", **options: Any) -> VideoPipeline:
    """The pipeline of the model's family and task on `backend`, for a model (preset, diffusers folder, hub id) or an
    engine directory. `options` are the backend's: `device`, `dtype`, `providers`, `compile_unet`, `cuda_graph`,
    `torch_options`, as `t2v_fast.runtime.open_backend` documents them."""
    runner, tokenizer, scheduler = open_backend(model, kind=_kind(model), backend=backend, **options)
    card = runner.card
    return PIPELINES[card.family, card.task](tokenizer, scheduler, runner)
