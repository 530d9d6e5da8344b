"""The model families and the tasks t2v-fast runs, as data: what identifies each, its defaults and parameters.

- Families: `text2video-zero`, a Stable Diffusion 1.x image UNet (`UNet2DConditionModel`) made temporal without
  training, by motion in the latent codes and cross-frame attention; `modelscope`, ModelScope text-to-video 1.7B, a
  video UNet (`UNet3DConditionModel`) trained on video, whose reference is diffusers' `TextToVideoSDPipeline`.
- Tasks, beside the family: what a run makes from what — the networks it needs, the input videos it takes and its
  guidance. `text-to-video`, the text-to-video checkpoints' own; `guided`, a Text2Video-Zero base with a ControlNet
  following a control video, chosen per request by giving one (`Task.input_videos`); `edit`, an Instruct-Pix2Pix
  checkpoint's own (family `instruct-pix2pix`: a Stable Diffusion 1.5 UNet taking an input frame's latents beside
  the noise), editing an input video by an instruction.

A model's family and task follow from its `model_index.json` and component configs (`identify`), so a folder, a hub
id, a preset and an engine directory say what they are without a flag. This module imports nothing heavy: the
command line reads it (and the parameter metadata) for `--help`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from t2v_fast.core.params import CommonParams, ParamInfo, param_infos
from t2v_fast.errors import UserError
from t2v_fast.families.guided.params import GuidedParams
from t2v_fast.families.instruct_pix2pix.params import EditParams
from t2v_fast.families.text2video_zero.params import TextToVideoZeroParams


@dataclass(frozen=True)
class Family:
    name: str
    title: str
    unet_class: str  # diffusers class of the UNet, as written in its config.json
    pipeline_class: str  # diffusers pipeline class written to model_index.json when saving
    defaults: Mapping[str, Any]  # parameters whose default differs from family to family
    params: type[CommonParams]  # the family's settings: the common parameters and its own
    task: str = "text-to-video"  # its checkpoints' own task (`TASKS`)


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
# Instruct-Pix2Pix as the original Text2Video-Zero system runs it (diffusers' pipeline with cross-frame attention):
# the checkpoint's Euler ancestral scheduler, 50 steps, guidance 7.5, image guidance 1.5, chunks of 8 frames; the
# length, rate and size are the input video's (None: no default of the family's).
INSTRUCT_PIX2PIX = Family(
    name="instruct-pix2pix",
    title="Instruct-Pix2Pix",
    unet_class="UNet2DConditionModel",
    pipeline_class="StableDiffusionInstructPix2PixPipeline",
    defaults={"frames": None, "fps": None, "guidance": 7.5, "image_guidance": 1.5, "chunk_size": 8},
    params=EditParams,
    task="edit",
)
EDIT = Task(
    name="edit",
    title="video editing",
    networks=("text_encoder", "unet", "vae_encoder", "vae_decoder"),
    input_videos=("video",),
    guidance="three-way",
    unet_inputs_per_latent=2,
    families=(INSTRUCT_PIX2PIX.name,),
)
FAMILIES = {family.name: family for family in (TEXT2VIDEO_ZERO, MODELSCOPE, INSTRUCT_PIX2PIX)}
TASKS = {task.name: task for task in (TEXT_TO_VIDEO, GUIDED, EDIT)}
# Checkpoints t2v-fast runs in another shape, by what gives them away, with what to say.
NOT_RUN_AS_IS = {
    "controlnet": (
        "a ControlNet pipeline folder; give its base model and its ControlNet apart (--controlnet FOLDER/controlnet)"
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


def family_of_unet(unet_config: Mapping[str, Any], latent_channels: int = 4) -> Family:
    """The family of a UNet config (a diffusers `config.json`, or a preset's config with its `_class_name`): by its
    class, and by its input channels where the class does not tell (Instruct-Pix2Pix's UNet is Stable Diffusion's,
    taking an image's latents beside the noise: twice the VAE's `latent_channels`)."""
    unet_class = unet_config.get("_class_name", TEXT2VIDEO_ZERO.unet_class)
    same_class = [family for family in FAMILIES.values() if family.unet_class == unet_class]
    if not same_class:
        raise UserError(f"unsupported UNet class {unet_class!r}; t2v-fast runs {', '.join(FAMILIES)} models")
    inputs = unet_config.get("in_channels", 4)
    for family in same_class:
        if inputs == latent_channels * TASKS[family.task].unet_inputs_per_latent:
            return family
    raise UserError(
        f"a {unet_class} taking {inputs} input channels fits no family for a VAE of {latent_channels} latent channels"
    )


def identify(
    model: str, model_index: Mapping[str, Any], unet_config: Mapping[str, Any], vae_config: Mapping[str, Any]
) -> tuple[Family, Task]:
    """The family and task of a checkpoint, from its `model_index.json` and its UNet's and VAE's configs: by the
    UNet (`family_of_unet`). A pipeline class naming a family whose task takes an input video needs that family's
    UNet; a plain pipeline class does not decide (an Instruct-Pix2Pix UNet saved as a `StableDiffusionPipeline` is
    still one)."""
    for key, what in NOT_RUN_AS_IS.items():
        if key in model_index:
            raise UserError(f"{model!r} is {what}")
    try:
        family = family_of_unet(unet_config, vae_config.get("latent_channels", 4))
    except UserError as error:
        raise UserError(f"{model!r}: {error}") from None
    pipeline_class = model_index.get("_class_name")
    named = [f for f in FAMILIES.values() if f.pipeline_class == pipeline_class and TASKS[f.task].input_videos]
    if named and family not in named:
        raise UserError(
            f"{model!r} says it is a {pipeline_class} (model_index.json), but its UNet is a {family.title} one"
        )
    return family, TASKS[family.task]


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
    """Every parameter of every family, common ones first, each once, with its owners (those that share one, e.g.
    the input video's cut, joined: "Instruct-Pix2Pix and guided video"), those of a section (fast mode, guided video)
    last: for the command line, the manifest columns and the web app."""
    found: dict[str, ParamInfo] = {}
    owners: dict[str, list[str]] = {}
    owned = [(family.params, family.title) for family in FAMILIES.values()]
    owned += [(task.params, task.title) for task in TASKS.values() if task.params]
    for settings, owner in owned:
        for info in param_infos(settings, owner):
            found.setdefault(info.name, info)
            if info.owner and info.owner not in owners.setdefault(info.name, []):
                owners[info.name].append(info.owner)
    joined = [replace(info, owner=_joined(owners.get(info.name, []))) for info in found.values()]
    return tuple(sorted(joined, key=lambda info: info.section != ""))


def _joined(names: list[str]) -> str:
    """ "A", "A and B", "A, B and C"."""
    return " and ".join(filter(None, [", ".join(names[:-1]), *names[-1:]]))


INPUT_VIDEOS = "the input video's"  # a task default of None: the request's input video sets it


def defaults_by_family(param: str) -> str:
    """A parameter's default in every family that has one, and where a task has its own, for help texts: "8 for
    Text2Video-Zero, 16 for ..., the control video's for guided video"."""
    found = [f"{_default_words(f.defaults[param])} for {f.title}" for f in FAMILIES.values() if param in f.defaults]
    found += [f"{_default_words(t.defaults[param])} for {t.title}" for t in TASKS.values() if param in t.defaults]
    return ", ".join(found)


def _default_words(value: Any) -> str:
    return INPUT_VIDEOS if value is None else f"{value:g}"
