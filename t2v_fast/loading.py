"""From a model name to a pipeline or a model card: the one place that decides what a name refers to.

A name is an engine directory (it holds `engine.json`), a preset, or a diffusers folder / hub id; `describe_model`
(configs only, for validating a night's manifest before any weights load) and `load_pipeline` (weights or graphs,
for rendering) take the same decision through `_kind`. The backend is chosen by `t2v_fast.runtime.open_backend`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from transformers import CLIPTokenizer

from t2v_fast.core.engine_dir import EngineDir
from t2v_fast.core.families import EDIT, INSTRUCT_PIX2PIX, MODELSCOPE, TEXT2VIDEO_ZERO, TEXT_TO_VIDEO
from t2v_fast.core.models import (
    ModelCard,
    read_config,
    read_model_index,
    resolve_folder,
    scheduler_from_config,
)
from t2v_fast.core.pipeline import VideoPipeline
from t2v_fast.core.presets import PRESETS, preset_configs, preset_scheduler, preset_tokenizer
from t2v_fast.families.guided.controlnet import check_fit
from t2v_fast.families.guided.pipeline import GuidedPipeline
from t2v_fast.families.instruct_pix2pix.pipeline import InstructPix2PixPipeline
from t2v_fast.families.modelscope.pipeline import ModelScopePipeline
from t2v_fast.families.text2video_zero.pipeline import TextToVideoZeroPipeline
from t2v_fast.runtime import open_backend

# The pipeline of each (family, task): that family's loop for that task, over any backend.
PIPELINES: dict[tuple[str, str], type[VideoPipeline]] = {
    (TEXT2VIDEO_ZERO.name, TEXT_TO_VIDEO.name): TextToVideoZeroPipeline,
    (MODELSCOPE.name, TEXT_TO_VIDEO.name): ModelScopePipeline,
    (INSTRUCT_PIX2PIX.name, EDIT.name): InstructPix2PixPipeline,
}


def _kind(model: str) -> str:
    if EngineDir.is_engine_dir(model):
        return "engines"
    return "preset" if model in PRESETS else "diffusers"


def describe_model(model: str, controlnet: str | None = None) -> ModelCard:
    """The card of a preset, a diffusers folder, a hub id or an engine directory, from configs only, with its
    scheduler and tokenizer attached; with `controlnet`, that ControlNet's (refused when it does not fit)."""
    card = _describe(model)
    if _kind(model) == "engines":  # it brings the ControlNet it was exported with, and runs no other
        EngineDir.load(model, verify_hashes=False).controlnet_for(controlnet)
        return card
    if controlnet is None:
        return card
    check_fit(controlnet, model, _unet_config(model))
    return replace(card, controlnet=controlnet)


def _unet_config(model: str) -> dict[str, Any]:
    if _kind(model) == "preset":
        return preset_configs(model)["unet"]
    return read_config(resolve_folder(model), "unet")


def _describe(model: str) -> ModelCard:
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


def load_pipeline(
    model: str,
    backend: str = "torch",
    controlnet: str | None = None,
    depth_model: str | None = None,
    **options: Any,
) -> VideoPipeline:
    """The pipeline of the model's family and task on `backend`, for a model (preset, diffusers folder, hub id) or an
    engine directory. `controlnet` (a preset, a `ControlNetModel` folder or a hub id) adds guided video to a
    Text2Video-Zero model, whose depth annotator runs `depth_model` (`t2v_fast.annotators`). `options` are the
    backend's: `device`, `dtype`, `providers`, `compile_unet`, `cuda_graph`, `torch_options`, as
    `t2v_fast.runtime.open_backend` documents them."""
    runner, tokenizer, scheduler = open_backend(
        model, kind=_kind(model), backend=backend, controlnet=controlnet, **options
    )
    card = runner.card
    if card.controlnet:
        return GuidedPipeline(tokenizer, scheduler, runner, depth_model=depth_model)
    return PIPELINES[card.family, card.task](tokenizer, scheduler, runner)
