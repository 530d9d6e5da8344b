"""The ControlNet beside a Text2Video-Zero base: loading (preset, folder, hub id), the fit check, and the video module
that the backends run and export writes, ControlNet and UNet in one graph.

Why one graph (`unet_controlnet`), as NVIDIA's TensorRT diffusion demo builds its ControlNet UNet: the ControlNet's
residuals (13 tensors for SD 1.5, every level's activations) stay inside one engine instead of crossing between two
per step, TensorRT fuses their additions into the UNet, and a step is one launch. A UNet taking residuals would have
to be exported apart from the plain one in any case, so two engines would save no weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from t2v_fast.attention_plugin import set_cross_frame_attention
from t2v_fast.errors import UserError

if TYPE_CHECKING:
    from diffusers.models import ControlNetModel

# The config keys a ControlNet must share with its base UNet to fit: its residuals are added to the UNet's skip
# connections (block channels, layers per block) and it reads the same text embeddings (cross-attention width).
FIT_KEYS = ("cross_attention_dim", "block_out_channels", "layers_per_block", "in_channels", "down_block_types")


class VideoControlNet(nn.Module):
    """A diffusers `ControlNetModel` seen as a video model, with cross-frame attention as the UNet has it (the
    reference recipe sets it on both): latents `(videos, frames, C, h, w)`, per-video text embeddings, control maps
    `(videos, frames, 3, H, W)` in [0, 1] -> the residuals of every down level and of the middle, frames flattened."""

    def __init__(self, controlnet: ControlNetModel):
        super().__init__()
        set_cross_frame_attention(controlnet)  # type: ignore[arg-type]  # the same `set_attn_processor` as a UNet's
        self.controlnet = controlnet

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        control: torch.Tensor,
        controlnet_scale: torch.Tensor,
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        num_frames = sample.shape[1]
        down, middle = self.controlnet(
            sample.flatten(0, 1),
            timestep,
            encoder_hidden_states=encoder_hidden_states,
            controlnet_cond=control.flatten(0, 1),
            conditioning_scale=controlnet_scale,
            cross_attention_kwargs={"num_frames": num_frames},
            return_dict=False,
        )
        return tuple(down), middle


class ControlledVideoUNet(nn.Module):
    """The network `unet_controlnet`: the ControlNet's residuals added into the base's video UNet, one step's noise
    `(videos, frames, C, h, w)` out."""

    def __init__(self, unet: nn.Module, controlnet: VideoControlNet):
        super().__init__()
        self.unet = unet
        self.controlnet = controlnet

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        control: torch.Tensor,
        controlnet_scale: torch.Tensor,
    ) -> torch.Tensor:
        down, middle = self.controlnet(sample, timestep, encoder_hidden_states, control, controlnet_scale)
        num_frames = sample.shape[1]
        base: Any = self.unet.unet  # the family's UNet under its video module (`VideoUNet`)
        noise = base(
            sample.flatten(0, 1),
            timestep,
            encoder_hidden_states=encoder_hidden_states,
            cross_attention_kwargs={"num_frames": num_frames},
            down_block_additional_residuals=down,
            mid_block_additional_residual=middle,
            return_dict=False,
        )[0]
        return noise.unflatten(0, (-1, num_frames))


def build_preset_controlnet(name: str, seed: int = 0) -> ControlNetModel:
    """A ControlNet preset with deterministic random weights that make it guide: a freshly initialised ControlNet adds
    nothing (its zero convolutions start at zero), and under PyTorch's default initialisation the control-map encoder
    shrinks its input's signal below its biases over its eight convolutions, so every frame would get the same
    residuals. The encoder is initialised to keep its signal (He-style, no biases), the zero convolutions small."""
    from diffusers.models import ControlNetModel

    from t2v_fast.core.presets import CONTROLNET_PRESETS, strip_meta

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        controlnet = ControlNetModel(**strip_meta(CONTROLNET_PRESETS[name]()))
        encoder = controlnet.controlnet_cond_embedding
        for layer in (encoder.conv_in, *encoder.blocks, encoder.conv_out):
            nn.init.normal_(layer.weight, std=1.5 * (2 / layer.weight[0].numel()) ** 0.5)
            nn.init.zeros_(layer.bias)
        for layer in (*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block):
            nn.init.normal_(layer.weight, std=0.5 / layer.weight[0].numel() ** 0.5)
            nn.init.normal_(layer.bias, std=0.02)
    return controlnet


def read_controlnet_config(controlnet: str) -> dict[str, Any]:
    """A ControlNet's config without its weights: a preset's, or a folder's / hub id's `config.json`."""
    from t2v_fast.core.presets import CONTROLNET_PRESETS

    if controlnet in CONTROLNET_PRESETS:
        return {"_class_name": "ControlNetModel", **CONTROLNET_PRESETS[controlnet]()}
    path = _controlnet_folder(controlnet) / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read the ControlNet config {path}: {error}") from None
    if config.get("_class_name") != "ControlNetModel":
        raise UserError(f"ControlNet {controlnet!r} is a {config.get('_class_name')!r}, not a ControlNetModel")
    return config


def load_controlnet(controlnet: str) -> ControlNetModel:
    """A preset, or a diffusers `ControlNetModel` folder or hub id (a `controlnet/` subfolder is looked into)."""
    from t2v_fast.core.presets import CONTROLNET_PRESETS

    if controlnet in CONTROLNET_PRESETS:
        return build_preset_controlnet(controlnet)
    from diffusers.models import ControlNetModel

    folder = _controlnet_folder(controlnet)
    read_controlnet_config(controlnet)
    try:
        return ControlNetModel.from_pretrained(folder)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot load ControlNet {controlnet!r}: {str(error).splitlines()[0]}") from None


def _controlnet_folder(controlnet: str) -> Path:
    from t2v_fast.core.models import HUB_ID

    folder = Path(controlnet).expanduser()
    if not folder.exists() and HUB_ID.fullmatch(controlnet) and not controlnet.startswith("."):
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(controlnet, allow_patterns=["*.json", "*.safetensors"]))
        except Exception as error:  # the hub client raises many types: network, auth, missing repo
            raise UserError(
                f"cannot fetch ControlNet {controlnet!r} from the hub: {str(error).splitlines()[0]}"
            ) from None
    elif not folder.exists():
        from t2v_fast.core.presets import CONTROLNET_PRESETS

        known = ", ".join(CONTROLNET_PRESETS)
        raise UserError(f"ControlNet {controlnet!r} is not a preset ({known}), an existing folder, or a hub id")
    if not (folder / "config.json").is_file() and (folder / "controlnet" / "config.json").is_file():
        folder = folder / "controlnet"
    if not (folder / "config.json").is_file():
        raise UserError(f"ControlNet folder {controlnet!r} has no config.json")
    return folder


def check_fit(controlnet: str, model: str, unet_config: dict[str, Any]) -> None:
    """Refuse a ControlNet that cannot guide the model whose UNet config this is, from configs alone: a base of
    another family, or one whose UNet it does not fit, naming both and what differs."""
    from t2v_fast.core.families import TEXT2VIDEO_ZERO, family_of_unet

    family = family_of_unet(unet_config)
    if family is not TEXT2VIDEO_ZERO:
        raise UserError(f"a ControlNet guides Text2Video-Zero models, and {model!r} is {family.title}")
    controlnet_config = read_controlnet_config(controlnet)
    unet_defaults = {"layers_per_block": 2, "in_channels": 4}
    differ = []
    for key in FIT_KEYS:
        ours, theirs = controlnet_config.get(key), unet_config.get(key, unet_defaults.get(key))
        if key == "down_block_types" and ours is None:
            continue
        if (list(ours) if isinstance(ours, list | tuple) else ours) != (
            list(theirs) if isinstance(theirs, list | tuple) else theirs
        ):
            differ.append(f"{key} {ours} vs {theirs}")
    if differ:
        raise UserError(f"ControlNet {controlnet!r} does not fit model {model!r}: " + "; ".join(differ))
