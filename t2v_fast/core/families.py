"""The model families and the tasks t2v-fast runs, as data: what identifies each, its defaults and parameters.

- Families: `text2video-zero`, a Stable Diffusion 1.x image UNet (`UNet2DConditionModel`) made temporal without
  training, by motion in the latent codes and cross-frame attention; `modelscope`, ModelScope text-to-video 1.7B, a
  video UNet (`UNet3DConditionModel`) trained on video, whose reference is diffusers' `TextToVideoSDPipeline`.
- Tasks, beside the family: what a run makes from what — the networks it needs, the input videos it takes and its
  guidance. `text-to-video`, every checkpoint's own; `guided`, a Text2Video-Zero base with a ControlNet following a
  control video, chosen per request by giving one (`Task.input_videos`). Video editing (Instruct-Pix2Pix) is a row to
  come, and a checkpoint shaped for it is refused, saying so, rather than run as something else.

A model's family and task follow from its `model_index.json` and component configs (`identify`), so a folder, a hub
id, a preset and an engine directory say what they are without a flag. This module imports nothing heavy: the
command line reads it (and the parameter metadata) for `--help`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from t2v_fast.core.params import CommonParams, ParamInfo, param_infos
from t2v_fast.errors import UserError
from t2v_fast.families.guided.params import GuidedParams
from t2v_fast.families.text2video_zero.params import TextToVideoZeroParams


@dataclass(frozen=True)
class Family:
    name: str
    title: str
    unet_class: str  # diffusers class of the UNet, as written in its config.json
    pipeline_class: str  # diffusers pipeline class written to model_index.json when saving
    defaults: Mapping[str, Any]  # parameters whose default differs from family to family
    params: type[CommonParams]  # the family's settings: the common parameters and its own


@dataclass(frozen=True)
class Task:
    name: str
    title: str
    networks: tuple[str, ...]  # the exported networks it runs (`t2v_fast.core.networks.NETWORKS` rows)
    input_videos: tuple[str, ...]  # videos a request gives besides the prompt (none for text-to-video)
    guidance: str  # "two-way" (classifier-free) or "three-way" (Instruct-Pix2Pix's)
    unet_inputs_per_latent: int  # the UNet's input channels per VAE latent channel: 1, or 2 with an image's latents
    families: tuple[str, ...]  # the families that run it
    params: type[CommonParams] | None = None  # its settings, where they are not the family's
    defaults: Mapping[str, Any] = field(default_factory=dict)  # over the family's


TEXT2VIDEO_ZERO = Family(
    name="text2video-zero",
    title="Text2Video-Zero",
    unet_class="UNet2DConditionModel",
    pipeline_class="StableDiffusionPipeline",
    defaults={"frames": 8, "guidance": 7.5, "fps": 4.0, "motion_x": 12.0, "motion_y": 12.0},
    params=TextToVideoZeroParams,
)
MODELSCOPE = Family(
    name="modelscope",
    title="ModelScope text-to-video",
    unet_class="UNet3DConditionModel",
    pipeline_class="TextToVideoSDPipeline",
    # The reference's defaults: 16 frames at 8 frames per second is its 2-second clip, guidance 9.0.
    defaults={"frames": 16, "guidance": 9.0, "fps": 8.0},
    params=CommonParams,
)
TEXT_TO_VIDEO = Task(
    name="text-to-video",
    title="text to video",
    networks=("text_encoder", "unet", "vae_decoder"),
    input_videos=(),
    guidance="two-way",
    unet_inputs_per_latent=1,
    families=(TEXT2VIDEO_ZERO.name, MODELSCOPE.name),
)
# Text2Video-Zero's guided video as the original system runs it: no latent motion (the control maps move the video),
# 20 steps, guidance 9.0; the length and rate are the control video's (None: no default of the family's).
GUIDED = Task(
    name="guided",
    title="guided video",
    networks=("text_encoder", "unet_controlnet", "vae_decoder"),
    input_videos=("control",),
    guidance="two-way",
    unet_inputs_per_latent=1,
    families=(TEXT2VIDEO_ZERO.name,),
    params=GuidedParams,
    defaults={"steps": 20, "guidance": 9.0, "frames": None, "fps": None},
)
FAMILIES = {family.name: family for family in (TEXT2VIDEO_ZERO, MODELSCOPE)}
TASKS = {task.name: task for task in (TEXT_TO_VIDEO, GUIDED)}
# Checkpoints shaped for a task not written yet, by what gives them away, with what to say.
NOT_YET = {
    "controlnet": (
        "a ControlNet pipeline folder; give its base model and its ControlNet apart (--controlnet FOLDER/controlnet)"
    ),
    "StableDiffusionInstructPix2PixPipeline": (
        "an Instruct-Pix2Pix model (video editing), which t2v-fast does not run yet"
    ),
}


def family_named(name: str) -> Family:
    if name not in FAMILIES:
        raise UserError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def task_named(name: str) -> Task:
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]


def family_of_unet(unet_config: Mapping[str, Any]) -> Family:
    """The family of a UNet config (a diffusers `config.json`, or a preset's config with its `_class_name`)."""
    unet_class = unet_config.get("_class_name", TEXT2VIDEO_ZERO.unet_class)
    for family in FAMILIES.values():
        if family.unet_class == unet_class:
            return family
    raise UserError(f"unsupported UNet class {unet_class!r}; t2v-fast runs {', '.join(FAMILIES)} models")


def identify(
    model: str, model_index: Mapping[str, Any], unet_config: Mapping[str, Any], vae_config: Mapping[str, Any]
) -> tuple[Family, Task]:
    """The family and task of a checkpoint, from its `model_index.json` and its UNet's and VAE's configs.

    The UNet's input channels tell the task apart where the classes do not: Instruct-Pix2Pix is a
    `UNet2DConditionModel` too, but takes the video's latents beside the noise (8 channels for a 4-channel VAE)."""
    for key, what in NOT_YET.items():
        if key in model_index or model_index.get("_class_name") == key:
            raise UserError(f"{model!r} is {what}")
    family = family_of_unet(unet_config)
    latent = vae_config.get("latent_channels", 4)
    inputs = unet_config.get("in_channels", 4)
    for task in TASKS.values():  # a checkpoint's own task; those with input videos are chosen per request
        if not task.input_videos and inputs == latent * task.unet_inputs_per_latent:
            return family, task
    if inputs == 2 * latent:
        raise UserError(
            f"{model!r} has a UNet taking {inputs} input channels, twice the VAE's {latent} latent channels:"
            f" {NOT_YET['StableDiffusionInstructPix2PixPipeline']}"
        )
    raise UserError(f"{model!r} has a UNet taking {inputs} input channels, but its VAE gives {latent}")


def settings_of(family: Family, task: Task) -> tuple[type[CommonParams], dict[str, Any], str]:
    """The settings class, the defaults and who takes them (for messages) of a family's task: the task's where it has
    its own."""
    if task.params is None:
        return family.params, dict(family.defaults), f"{family.title} models"
    return task.params, {**family.defaults, **task.defaults}, f"{task.title} requests"


def task_of_inputs(inputs: Mapping[str, Any]) -> Task:
    """The task a request runs, by the input videos it gives (none: text to video)."""
    given = {name for name, value in inputs.items() if value is not None}
    for task in TASKS.values():
        if given == set(task.input_videos):
            return task
    raise UserError(f"no task takes the input videos {', '.join(sorted(given))} together")


def param_owners() -> dict[str, str]:
    """Every parameter some family takes but not all, with the title of the family that takes it."""
    return {info.name: info.owner for info in all_params() if info.owner}


def all_params() -> tuple[ParamInfo, ...]:
    """Every parameter of every family, common ones first, each once, with its owner, those of a section (fast
    mode) last: for the command line, the manifest columns and the web app."""
    found: dict[str, ParamInfo] = {}
    for family in FAMILIES.values():
        for info in param_infos(family.params, family.title):
            found.setdefault(info.name, info)
    for task in TASKS.values():
        for info in param_infos(task.params, task.title) if task.params else ():
            found.setdefault(info.name, info)
    return tuple(sorted(found.values(), key=lambda info: info.section != ""))


INPUT_VIDEOS = "the input video's"  # a task default of None: the request's input video sets it


def defaults_by_family(param: str) -> str:
    """A parameter's default in every family that has one, and where a task has its own, for help texts: "8 for
    Text2Video-Zero, 16 for ..., the control video's for guided video"."""
    found = [f"{f.defaults[param]:g} for {f.title}" for f in FAMILIES.values() if param in f.defaults]
    for task in TASKS.values():
        if param in task.defaults:
            value = task.defaults[param]
            found.append(f"{INPUT_VIDEOS if value is None else f'{value:g}'} for {task.title}")
    return ", ".join(found)
