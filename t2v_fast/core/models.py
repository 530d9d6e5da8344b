"""Loading and saving a model's five components (tokenizer, text encoder, UNet, VAE, scheduler), from a preset, a
local folder or a hub id, for either family (`t2v_fast.core.families`)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import diffusers
import torch

# From their own modules: for a type checker, diffusers' top-level names are placeholder classes (its
# `utils.dummy_pt_objects`, what it exports without torch), not these.
from diffusers.models import AutoencoderKL
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from transformers import CLIPTextModel, CLIPTokenizer

from t2v_fast.core.choices import DTYPE_NAMES
from t2v_fast.core.deepcache import EXPORTED_BRANCH, branch_count, feature_channels
from t2v_fast.core.families import (
    GUIDED,
    INSTRUCT_PIX2PIX,
    TEXT2VIDEO_ZERO,
    TEXT_TO_VIDEO,
    Family,
    Task,
    family_named,
    family_of_unet,
    identify,
    param_owners,
    settings_of,
    task_named,
)
from t2v_fast.core.params import CommonParams, ParamProblem, ParamRequest, raise_problems, resolve
from t2v_fast.core.presets import PRESETS, build_random_components
from t2v_fast.errors import UserError

if TYPE_CHECKING:
    from diffusers.models import ControlNetModel, UNet2DConditionModel, UNet3DConditionModel

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}


class Scheduler(Protocol):
    """A diffusers scheduler as t2v-fast uses one. Every diffusers scheduler has these, but no diffusers base class
    declares them (`SchedulerMixin` has neither the config nor the stepping), so they are spelled out here."""

    timesteps: torch.Tensor  # after `set_timesteps`
    init_noise_sigma: float

    @property
    def config(self) -> Mapping[str, Any]: ...

    @classmethod
    def from_config(cls, config: Any, **kwargs: Any) -> Any: ...

    def set_timesteps(self, num_inference_steps: int) -> None: ...

    def scale_model_input(self, sample: torch.Tensor, timestep: Any) -> torch.Tensor: ...

    def step(self, *args: Any, **kwargs: Any) -> Any: ...  # each scheduler's own options (e.g. `generator`)

    def save_pretrained(self, save_directory: Path) -> None: ...


@dataclass
class ModelComponents:
    """Everything a run needs from a checkpoint: a Stable Diffusion 1.x one, or a ModelScope text-to-video one."""

    model_id: str
    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    unet: UNet2DConditionModel | UNet3DConditionModel  # by family
    vae: AutoencoderKL
    scheduler: Scheduler
    weights_sha256: str
    # Guided video's ControlNet (`t2v_fast.families.guided.controlnet`), when one was loaded beside the base.
    controlnet: ControlNetModel | None = None
    controlnet_id: str = ""
    controlnet_sha256: str = ""

    @property
    def card(self) -> ModelCard:
        return ModelCard.from_components(self)


@dataclass(frozen=True)
class ModelCard:
    """The one description of a model: what validating a request, the pipelines, the exported networks and
    `engine.json` (its `model_info`, written by `to_json`) need to know, known from the configs without weights.

    `scheduler` and `tokenizer`, when attached, are the model's own (the t0/t1 rule and the prompt-length warning
    need them); they are not part of the serialised card. `weights_sha256` is known once the weights are loaded (an
    engine directory records it); a card described from configs alone has it empty."""

    model_id: str
    family: str
    latent_channels: int
    vae_scale_factor: int
    native_size: int
    text_max_length: int
    text_dim: int
    task: str = TEXT_TO_VIDEO.name  # engine directories exported before tasks existed are text-to-video
    weights_sha256: str = ""
    # Fast mode (`t2v_fast.core.deepcache`): the UNet's branches, and the channels of the exported branch's feature
    # (0: unknown, in engine directories exported before fast mode).
    cache_branches: int = 0
    cache_feature_channels: int = 0
    # Guided video: the ControlNet loaded beside the base ("" without one) and the hash of its weights.
    controlnet: str = ""
    controlnet_sha256: str = ""
    scheduler: Any = field(default=None, compare=False, repr=False)
    tokenizer: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def from_configs(
        cls,
        model_id: str,
        model_index: Mapping[str, Any],
        configs: Mapping[str, Mapping[str, Any]],
        scheduler: Scheduler | None,
        tokenizer: CLIPTokenizer,
        weights_sha256: str = "",
    ) -> ModelCard:
        """From `model_index.json` and the `unet`, `vae` and `text_encoder` configs; refuses a family or task
        t2v-fast does not run (`t2v_fast.core.families.identify`)."""
        family, task = identify(model_id, model_index, configs["unet"], configs["vae"])
        scale = vae_scale_factor(configs["vae"])
        blocks = tuple(configs["unet"]["block_out_channels"])
        layers = configs["unet"].get("layers_per_block", 2)
        layers = layers if isinstance(layers, int) else layers[0]  # per block in some configs; level 0's here
        return cls(
            model_id=model_id,
            family=family.name,
            latent_channels=configs["unet"].get("in_channels", 4) // task.unet_inputs_per_latent,
            vae_scale_factor=scale,
            native_size=configs["unet"]["sample_size"] * scale,
            text_max_length=tokenizer.model_max_length,
            text_dim=configs["text_encoder"]["hidden_size"],
            task=task.name,
            weights_sha256=weights_sha256,
            cache_branches=branch_count(len(blocks)),
            cache_feature_channels=feature_channels(blocks, layers, EXPORTED_BRANCH),
            scheduler=scheduler,
            tokenizer=tokenizer,
        )

    @classmethod
    def from_components(cls, components: ModelComponents) -> ModelCard:
        configs = {
            "unet": {**components.unet.config, "_class_name": type(components.unet).__name__},
            "vae": dict(components.vae.config),
            "text_encoder": components.text_encoder.config.to_dict(),
        }
        latent_channels = configs["vae"].get("latent_channels", 4)
        model_index = {"_class_name": family_of_unet(configs["unet"], latent_channels).pipeline_class}
        card = cls.from_configs(
            components.model_id,
            model_index,
            configs,
            components.scheduler,
            components.tokenizer,
            components.weights_sha256,
        )
        return replace(card, controlnet=components.controlnet_id, controlnet_sha256=components.controlnet_sha256)

    @classmethod
    def from_json(cls, entry: Mapping[str, Any], scheduler: Any = None, tokenizer: Any = None) -> ModelCard:
        """A card from `to_json`'s object; keys an earlier version wrote and this one dropped are ignored."""
        known = {f.name for f in fields(cls)} - {"scheduler", "tokenizer"}
        return cls(**{k: v for k, v in entry.items() if k in known}, scheduler=scheduler, tokenizer=tokenizer)

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("scheduler", "tokenizer")}

    def with_runtime(self, scheduler: Any, tokenizer: Any) -> ModelCard:
        return replace(self, scheduler=scheduler, tokenizer=tokenizer)

    @property
    def family_record(self) -> Family:
        return family_named(self.family)

    @property
    def task_record(self) -> Task:
        return task_named(self.task)

    @property
    def size_multiple(self) -> int:
        """Heights and widths are multiples of one latent pixel..."""
        return self.vae_scale_factor

    @property
    def min_size(self) -> int:
        """... and at least two."""
        return 2 * self.vae_scale_factor

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks this model runs: its checkpoint's, and guided video with a ControlNet beside it."""
        return (self.task, GUIDED.name) if self.controlnet else (self.task,)

    def check(self, request: ParamRequest, task: Task | None = None) -> tuple[CommonParams | None, list[ParamProblem]]:
        """The request's settings for this model running `task` (default: its checkpoint's), or None and every
        problem."""
        family = self.family_record
        task = task or self.task_record
        own = self.task_record
        if family.name not in task.families and own.input_videos and not task.input_videos:
            message = f"{self.model_id!r} is an {family.title} model ({own.title}): give the input video to edit"
            return None, [ParamProblem(own.input_videos, message)]
        if family.name not in task.families:
            message = f"{task.title} runs {', '.join(family_named(f).title for f in task.families)} models, and"
            message += f" {self.model_id!r} is {family.title}"
            return None, [ParamProblem(task.input_videos or ("model",), message)]
        settings, defaults, title = settings_of(family, task)
        return resolve(request, self, settings, defaults, param_owners(), title)

    def resolve(self, request: ParamRequest, task: Task | None = None) -> CommonParams:
        """The request's settings for this model running `task`; a `UserError` names every problem."""
        settings, problems = self.check(request, task)
        raise_problems(problems)
        assert settings is not None
        return settings


def vae_scale_factor(vae_config: Any) -> int:
    """Pixels per latent along each axis: the VAE halves the size at every block but the last."""
    return 2 ** (len(vae_config["block_out_channels"]) - 1)


def resolve_device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise UserError(f"invalid device {device!r}: {error}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} requested but CUDA is not available on this machine")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Half precision on GPUs, float32 on CPUs (where half is slow and less tested), unless the user chooses."""
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise UserError(f"invalid dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
    return DTYPES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def weights_sha256(*modules: torch.nn.Module) -> str:
    """Content hash of the weights as loaded (names, dtypes, shapes and bytes), independent of where they came from."""
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in module.state_dict().items():
            tensor = tensor.detach().cpu().contiguous()
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


COMPONENT_FOLDERS = ("tokenizer", "text_encoder", "unet", "vae", "scheduler")
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def _download(repo_id: str) -> Path:
    """Fetch only what we load (configs, tokenizer, safetensors of the five components) into the hub cache."""
    from huggingface_hub import snapshot_download

    patterns = ["model_index.json", *(f"{name}/*.json" for name in COMPONENT_FOLDERS), "tokenizer/*.txt"]
    patterns += [f"{name}/*.safetensors" for name in COMPONENT_FOLDERS]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, ignore_patterns=["*.fp16.*", "*non_ema*"]))
    except Exception as error:  # the hub client raises many types: network, auth, missing repo
        raise UserError(f"cannot fetch model {repo_id!r} from the hub: {str(error).splitlines()[0]}") from None


def resolve_folder(model: str) -> Path:
    """A local diffusers folder for `model`: the folder itself, or a hub id's snapshot."""
    folder = Path(model).expanduser()
    if not folder.exists() and HUB_ID.fullmatch(model) and not model.startswith("."):
        folder = _download(model)
    elif not folder.exists():
        raise UserError(
            f"model {model!r} is not a preset ({', '.join(PRESETS)}), an existing folder, or a hub id (org/name)"
        )
    if not (folder / "model_index.json").is_file():
        raise UserError(f"model folder {model!r} is not a diffusers folder (no model_index.json)")
    return folder


def scheduler_from_config(config: dict[str, Any], family: Family) -> Scheduler:
    """The scheduler a family runs: Text2Video-Zero is defined with DDIM (checkpoints often ship PNDM, whose config
    DDIM accepts); ModelScope runs the checkpoint's own scheduler, as its reference does."""
    name = config.get("_class_name", "DDIMScheduler") if family is not TEXT2VIDEO_ZERO else "DDIMScheduler"
    scheduler_class = getattr(diffusers, name, None)
    if not (isinstance(scheduler_class, type) and issubclass(scheduler_class, SchedulerMixin)):
        raise UserError(f"unknown scheduler class {name!r} in the model's scheduler config")
    # Every scheduler class mixes in `ConfigMixin` (`from_config`) beside `SchedulerMixin`, which does not declare it.
    scheduler: Scheduler = scheduler_class.from_config(config)  # type: ignore[attr-defined]
    return scheduler


def read_config(folder: Path, component: str) -> dict[str, Any]:
    name = "scheduler_config.json" if component == "scheduler" else "config.json"
    path = folder / component / name
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read {path}: {error}") from None


def read_model_index(folder: Path) -> dict[str, Any]:
    path = folder / "model_index.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read {path}: {error}") from None


def _load_pretrained(model: str) -> dict[str, Any]:
    folder = resolve_folder(model)
    configs = {name: read_config(folder, name) for name in ("unet", "vae")}
    family, _ = identify(model, read_model_index(folder), configs["unet"], configs["vae"])
    try:
        return {
            "tokenizer": CLIPTokenizer.from_pretrained(folder / "tokenizer"),
            "text_encoder": CLIPTextModel.from_pretrained(folder / "text_encoder"),
            "unet": getattr(diffusers, family.unet_class).from_pretrained(folder / "unet"),
            "vae": AutoencoderKL.from_pretrained(folder / "vae"),
            "scheduler": scheduler_from_config(read_config(folder, "scheduler"), family),
        }
    except (OSError, ValueError) as error:
        raise UserError(f"cannot load model {model!r} from {folder}: {str(error).splitlines()[0]}") from None


def load_components(
    model: str,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    controlnet: str | None = None,
) -> ModelComponents:
    """Load a preset name, a diffusers-format folder or a hub id onto `device` in `dtype`, with a ControlNet (preset,
    folder or hub id) beside it for guided video; a ControlNet that does not fit the base is refused first."""
    from t2v_fast.families.guided.controlnet import check_fit, load_controlnet

    device = device if isinstance(device, torch.device) else resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    parts = build_random_components(model) if model in PRESETS else _load_pretrained(model)
    digest = weights_sha256(parts["text_encoder"], parts["unet"], parts["vae"])
    networks = [parts["text_encoder"], parts["unet"], parts["vae"]]
    guided: dict[str, Any] = {}
    if controlnet is not None:
        check_fit(controlnet, model, {**parts["unet"].config, "_class_name": type(parts["unet"]).__name__})
        network = load_controlnet(controlnet)
        guided = {"controlnet": network, "controlnet_id": controlnet, "controlnet_sha256": weights_sha256(network)}
        networks.append(network)
    for module in networks:
        module.to(device).eval().requires_grad_(False)
        # Cast floating-point tensors only; diffusers' `.to(dtype)` also logs a spurious note about fp32 modules.
        {torch.float32: module.float, torch.float16: module.half, torch.bfloat16: module.bfloat16}[dtype]()
    return ModelComponents(model_id=model, weights_sha256=digest, **parts, **guided)


def save_components(components: ModelComponents, folder: str | Path) -> Path:
    """Write a diffusers-format folder that diffusers' own pipelines load too: `StableDiffusionPipeline` (and
    `TextToVideoZeroPipeline`) for Text2Video-Zero, `TextToVideoSDPipeline` for ModelScope,
    `StableDiffusionInstructPix2PixPipeline` for Instruct-Pix2Pix."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    components.tokenizer.save_pretrained(folder / "tokenizer")
    components.text_encoder.save_pretrained(folder / "text_encoder")
    components.unet.save_pretrained(folder / "unet")
    components.vae.save_pretrained(folder / "vae")
    components.scheduler.save_pretrained(folder / "scheduler")
    family = components.card.family_record
    model_index: dict[str, Any] = {
        "_class_name": family.pipeline_class,
        "_diffusers_version": diffusers.__version__,
        "scheduler": ["diffusers", type(components.scheduler).__name__],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", family.unet_class],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    if family in (TEXT2VIDEO_ZERO, INSTRUCT_PIX2PIX):  # Stable Diffusion's pipelines, which load a safety checker
        _save_placeholder_safety_checker(folder)
        model_index |= {
            "feature_extractor": ["transformers", "CLIPImageProcessor"],
            "requires_safety_checker": False,
            "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
        }
    (folder / "model_index.json").write_text(json.dumps(dict(sorted(model_index.items())), indent=2) + "\n")
    return folder


def _save_placeholder_safety_checker(folder: Path) -> None:
    """A tiny safety checker whose thresholds (diffusers' initial ones) can never flag an image.

    t2v-fast never runs a safety checker, but diffusers' TextToVideoZeroPipeline refuses to load a folder without one;
    this placeholder lets `TextToVideoZeroPipeline.from_pretrained(folder)` work with no extra arguments.
    """
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    tiny = {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 1}
    config = CLIPConfig(
        text_config={
            **tiny,
            "vocab_size": 514,
            "max_position_embeddings": 77,
            "bos_token_id": 512,
            "eos_token_id": 513,
        },
        vision_config={**tiny, "image_size": 32, "patch_size": 4},
        projection_dim=32,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        StableDiffusionSafetyChecker(config).save_pretrained(folder / "safety_checker")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        folder / "feature_extractor"
    )
