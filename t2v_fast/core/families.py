"""The model families t2v-fast runs, as data: what identifies each, its defaults, and the parameters only it takes.

- `text2video-zero`: a Stable Diffusion 1.x image UNet (`UNet2DConditionModel`) made temporal without training, by
  motion in the latent codes and cross-frame attention.
- `modelscope`: ModelScope text-to-video 1.7B, a video UNet (`UNet3DConditionModel`, temporal convolutions and
  attention) trained on video; diffusers' `TextToVideoSDPipeline` is its reference.

A model's family follows from its UNet's class, so a folder, a hub id, a preset and an engine directory all say
which family they are without a flag. This module imports nothing heavy: the command line reads it for `--help`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from t2v_fast.errors import UserError


@dataclass(frozen=True)
class Family:
    name: str
    title: str
    unet_class: str  # diffusers class of the UNet, as written in its config.json
    pipeline_class: str  # diffusers pipeline class written to model_index.json when saving
    defaults: Mapping[str, Any]  # generation parameters that differ from family to family
    own_params: tuple[str, ...]  # parameters only this family takes; any other family refuses them


TEXT2VIDEO_ZERO = Family(
    name="text2video-zero",
    title="Text2Video-Zero",
    unet_class="UNet2DConditionModel",
    pipeline_class="StableDiffusionPipeline",
    defaults={"frames": 8, "guidance": 7.5, "fps": 4.0, "motion_x": 12.0, "motion_y": 12.0},
    own_params=("motion_x", "motion_y", "t0", "t1", "chunk_size"),
)
MODELSCOPE = Family(
    name="modelscope",
    title="ModelScope text-to-video",
    unet_class="UNet3DConditionModel",
    pipeline_class="TextToVideoSDPipeline",
    # The reference's defaults: 16 frames at 8 frames per second is its 2-second clip, guidance 9.0.
    defaults={"frames": 16, "guidance": 9.0, "fps": 8.0},
    own_params=(),
)
FAMILIES = {family.name: family for family in (TEXT2VIDEO_ZERO, MODELSCOPE)}
# Parameters some family does not take, with the family that does (for error messages).
FAMILY_PARAMS = {param: family for family in FAMILIES.values() for param in family.own_params}


def family_named(name: str) -> Family:
    if name not in FAMILIES:
        raise UserError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def family_of_unet(unet_config: Mapping[str, Any]) -> Family:
    """The family of a UNet config (a diffusers `config.json`, or a preset's config with its `_class_name`)."""
    unet_class = unet_config.get("_class_name", TEXT2VIDEO_ZERO.unet_class)
    for family in FAMILIES.values():
        if family.unet_class == unet_class:
            return family
    raise UserError(f"unsupported UNet class {unet_class!r}; t2v-fast runs {', '.join(FAMILIES)} models")


def takes(family: Family, param: str) -> bool:
    """Whether `family` takes `param`: every shared parameter, and its own."""
    owner = FAMILY_PARAMS.get(param)
    return owner is None or owner is family


def defaults_by_family(param: str) -> str:
    """A parameter's default in every family that has one, for help texts: "8 for Text2Video-Zero, 16 for ..."."""
    return ", ".join(f"{f.defaults[param]:g} for {f.title}" for f in FAMILIES.values() if param in f.defaults)
