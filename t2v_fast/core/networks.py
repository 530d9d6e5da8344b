"""The networks t2v-fast exports and runs, described as data: one row per network.

A row says how to build the exported module from loaded components, and names each input and output with a
symbolic shape. A symbol is either a dynamic axis (`DYNAMIC_AXES`, with the range the ONNX graph is exported for) or
a fact of the model (`model_dims`). Export (example inputs, dynamic axes), `t2v-fast check` (inputs to compare on),
TensorRT (optimisation profiles) and the backends (input names) all read this table, in the manner of the TensorRT
diffusion demo's `get_input_names / get_dynamic_axes / get_input_profile / get_sample_input`; a new model family
adds rows, not branches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from t2v_fast.attention_plugin import VideoUNet
from t2v_fast.core.deepcache import EXPORTED_BRANCH, CachedUNet, CachingUNet
from t2v_fast.core.families import INSTRUCT_PIX2PIX, MODELSCOPE, TEXT2VIDEO_ZERO
from t2v_fast.core.models import ModelCard, ModelComponents
from t2v_fast.errors import UserError
from t2v_fast.families.guided.controlnet import ControlledVideoUNet, VideoControlNet
from t2v_fast.families.modelscope.unet3d import VideoUNet3D

if TYPE_CHECKING:
    from diffusers.models import AutoencoderKL

# VAE images decoded per call: the pipeline's default, and the largest image batch an engine is built for.
DECODE_BATCH_SIZE = 8
# A timestep inside the range the networks were trained on, for example inputs.
EXAMPLE_TIMESTEP = 801

# Every dynamic axis and the range the exported graphs accept; TensorRT profiles narrow these at build time.
DYNAMIC_AXES: dict[str, tuple[int, int]] = {
    "batch": (1, 1024),  # text-encoder prompts
    "videos": (1, 1024),  # UNet batch: videos × (2 with guidance)
    "frames": (1, 4096),
    # From 3: at 2, a stride-2 convolution makes an axis 1, which torch.export's non-strict tracing refuses to keep
    # symbolic (a guard `size != 1`). The ONNX graphs themselves have no range: smaller latents still run.
    "latent_height": (3, 1024),
    "latent_width": (3, 1024),
    # Guided video's control maps, at the latents' size times the VAE's scale.
    "height": (24, 8192),
    "width": (24, 8192),
    # VAE decoder batch; below 64 because diffusers' upsampler branches at 64 (a `.contiguous()` that ONNX does not
    # need), which non-strict tracing cannot keep symbolic. The pipeline decodes DECODE_BATCH_SIZE at a time.
    "images": (1, 63),
}


class TextEncoder(nn.Module):
    """CLIP text encoder returning only the last hidden state, the one output the UNet consumes.

    The torch backend runs this module and export writes it to ONNX, so both compute the same thing."""

    def __init__(self, text_encoder: nn.Module):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids, return_dict=False)[0]


class VaeDecoder(nn.Module):
    """VAE decoder taking the denoiser's latents, so the scaling factor is part of the exported graph too."""

    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        self.vae = vae

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents / self.vae.config["scaling_factor"], return_dict=False)[0]


class VaeEncoder(nn.Module):
    """VAE encoder giving the mode of the latent distribution, unscaled: Instruct-Pix2Pix's UNet takes the input
    frame's latents as its reference pipeline encodes them (`retrieve_latents(..., sample_mode="argmax")`)."""

    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        self.vae = vae

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(images, return_dict=False)[0].mode()


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: its name, symbolic shape and dtype (`float` is the network's precision)."""

    name: str
    shape: tuple[str | int, ...]
    dtype: str = "float"
    example: str = "noise"  # how to make an example input: noise, unit (uniform in [0, 1)), token_ids, timestep, scale

    def resolve(self, dims: dict[str, int]) -> list[int]:
        return [dims[axis] if isinstance(axis, str) else axis for axis in self.shape]

    def dynamic_axes(self) -> dict[int, str]:
        return {i: axis for i, axis in enumerate(self.shape) if axis in DYNAMIC_AXES}

    def describe(self, fixed: dict[str, int]) -> list[str | int]:
        """The shape with the model's facts filled in and every varying axis left as its name (for engine.json)."""
        return [fixed.get(axis, axis) if isinstance(axis, str) else axis for axis in self.shape]


@dataclass(frozen=True)
class NetworkSpec:
    name: str
    build: Callable[[ModelComponents], nn.Module]
    config: Callable[[ModelComponents], dict[str, Any]]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [spec.name for spec in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {spec.name: spec.dynamic_axes() for spec in self.inputs}

    def axis_ranges(self) -> dict[str, list[int]]:
        used = {axis for axes in self.dynamic_axes().values() for axis in axes.values()}
        return {axis: list(DYNAMIC_AXES[axis]) for axis in DYNAMIC_AXES if axis in used}

    def sample_inputs(
        self, dims: dict[str, int], dtype: torch.dtype, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Random inputs (never all zeros) of the shapes `dims` gives, on the CPU."""
        made = {}
        for spec in self.inputs:
            shape = spec.resolve(dims)
            if spec.example == "token_ids":
                made[spec.name] = torch.randint(0, 500, shape, generator=generator)
            elif spec.example == "timestep":
                made[spec.name] = torch.tensor(EXAMPLE_TIMESTEP)
            elif spec.example == "scale":
                made[spec.name] = torch.tensor(1.0, dtype=dtype)
            elif spec.example == "unit":
                made[spec.name] = torch.rand(shape, generator=generator, dtype=dtype)
            else:
                made[spec.name] = torch.randn(shape, generator=generator, dtype=dtype)
        return made

    def output_shapes(self, shapes: dict[str, tuple[int, ...]], info: ModelCard) -> list[list[int]]:
        """Each output's shape for these input shapes: every symbol read off the inputs, pixels from latents (or
        latents from pixels)."""
        values = model_dims(info)
        for spec in self.inputs:
            values.update(
                {axis: size for axis, size in zip(spec.shape, shapes[spec.name], strict=True) if isinstance(axis, str)}
            )
        scale = info.vae_scale_factor
        for pixels, latent in (("height", "latent_height"), ("width", "latent_width")):
            if latent in values:  # a decoder's pixels from its latents, an encoder's latents from its pixels
                values[pixels] = values[latent] * scale
            elif pixels in values:
                values[latent] = values[pixels] // scale
        return [spec.resolve(values) for spec in self.outputs]

    def profile(self, low: dict[str, int], opt: dict[str, int], high: dict[str, int]) -> dict[str, list[list[int]]]:
        """Per input, [min, opt, max] shapes for a TensorRT optimisation profile."""
        return {spec.name: [spec.resolve(low), spec.resolve(opt), spec.resolve(high)] for spec in self.inputs}


def model_dims(info: ModelCard) -> dict[str, int]:
    """The fixed symbols: facts of the model."""
    return {
        "tokens": info.text_max_length,
        "text_dim": info.text_dim,
        "channels": info.latent_channels,
        # The UNet's input: the latents, and for video editing the input frame's latents beside them.
        "unet_channels": info.latent_channels * info.task_record.unet_inputs_per_latent,
        "feature_channels": info.cache_feature_channels,
    }


def dims(info: ModelCard, *, videos: int, frames: int, height: int, width: int, images: int) -> dict[str, int]:
    """Every symbol's value for a UNet batch of `videos` (guidance included) of `frames` frames, `height`×`width`
    pixels, `images` VAE images per call; the text batch equals the UNet batch."""
    scale = info.vae_scale_factor
    return {
        **model_dims(info),
        "batch": videos,
        "videos": videos,
        "frames": frames,
        "latent_height": height // scale,
        "latent_width": width // scale,
        "height": height // scale * scale,
        "width": width // scale * scale,
        "images": images,
    }


# Each family's UNet as a video model with the one interface below: `(videos, frames, C, h, w)` in and out.
# Each takes its family's UNet (`ModelComponents.unet`: UNet2DConditionModel or UNet3DConditionModel).
VIDEO_UNETS: dict[str, Callable[[Any], nn.Module]] = {
    TEXT2VIDEO_ZERO.name: VideoUNet,
    MODELSCOPE.name: VideoUNet3D,
    INSTRUCT_PIX2PIX.name: VideoUNet,  # Stable Diffusion's UNet with cross-frame attention, taking 8 channels
}


def _controlnet(components: ModelComponents) -> Any:
    if components.controlnet is None:
        raise UserError(f"{components.model_id!r} was loaded without a ControlNet, which guided video needs")
    return components.controlnet


LATENTS = ("videos", "frames", "channels", "latent_height", "latent_width")
UNET_INPUTS = (
    TensorSpec("sample", ("videos", "frames", "unet_channels", "latent_height", "latent_width")),
    TensorSpec("timestep", (), dtype="int64", example="timestep"),
    TensorSpec("encoder_hidden_states", ("videos", "tokens", "text_dim")),
)
NOISE = TensorSpec("noise", LATENTS)
# What fast mode's full step caches for `EXPORTED_BRANCH`: the hidden state entering the UNet's last up layer, at the
# latents' resolution (`t2v_fast.core.deepcache`).
FEATURE = TensorSpec("feature", ("videos", "frames", "feature_channels", "latent_height", "latent_width"))

NETWORKS: dict[str, NetworkSpec] = {
    "text_encoder": NetworkSpec(
        name="text_encoder",
        build=lambda c: TextEncoder(c.text_encoder),
        config=lambda c: c.text_encoder.config.to_dict(),
        inputs=(TensorSpec("input_ids", ("batch", "tokens"), dtype="int64", example="token_ids"),),
        outputs=(TensorSpec("text_embeddings", ("batch", "tokens", "text_dim")),),
    ),
    "unet": NetworkSpec(
        name="unet",
        build=lambda c: VIDEO_UNETS[c.card.family](c.unet),
        config=lambda c: dict(c.unet.config),
        inputs=UNET_INPUTS,
        outputs=(NOISE,),
    ),
    "vae_decoder": NetworkSpec(
        name="vae_decoder",
        build=lambda c: VaeDecoder(c.vae),
        config=lambda c: dict(c.vae.config),
        inputs=(TensorSpec("latents", ("images", "channels", "latent_height", "latent_width")),),
        outputs=(TensorSpec("images", ("images", 3, "height", "width")),),
    ),
    # Video editing's input frames, in [-1, 1], to the latents its UNet takes beside the noise.
    "vae_encoder": NetworkSpec(
        name="vae_encoder",
        build=lambda c: VaeEncoder(c.vae),
        config=lambda c: dict(c.vae.config),
        inputs=(TensorSpec("images", ("images", 3, "height", "width")),),
        outputs=(TensorSpec("image_latents", ("images", "channels", "latent_height", "latent_width")),),
    ),
    # Fast mode's two graphs (`t2v-fast export --fast`): the full step that also returns the feature, and the shallow
    # branch that takes it. Their config records the branch they were built for.
    "unet_caching": NetworkSpec(
        name="unet_caching",
        build=lambda c: CachingUNet(VIDEO_UNETS[c.card.family](c.unet), EXPORTED_BRANCH),
        config=lambda c: {**dict(c.unet.config), "cache_branch": EXPORTED_BRANCH},
        inputs=UNET_INPUTS,
        outputs=(NOISE, FEATURE),
    ),
    "unet_cached": NetworkSpec(
        name="unet_cached",
        build=lambda c: CachedUNet(VIDEO_UNETS[c.card.family](c.unet), EXPORTED_BRANCH),
        config=lambda c: {**dict(c.unet.config), "cache_branch": EXPORTED_BRANCH},
        inputs=(*UNET_INPUTS, FEATURE),
        outputs=(NOISE,),
    ),
    # Guided video's step (`t2v_fast.families.guided.controlnet`): the ControlNet and the UNet in one graph.
    "unet_controlnet": NetworkSpec(
        name="unet_controlnet",
        build=lambda c: ControlledVideoUNet(VIDEO_UNETS[c.card.family](c.unet), VideoControlNet(_controlnet(c))),
        config=lambda c: {**dict(c.unet.config), "controlnet": dict(_controlnet(c).config)},
        inputs=(
            *UNET_INPUTS,
            TensorSpec("control", ("videos", "frames", 3, "height", "width"), example="unit"),
            TensorSpec("controlnet_scale", (), example="scale"),
        ),
        outputs=(NOISE,),
    ),
}
# Exported only on request, so an engine directory may lack them; every other network is in every one.
FAST_NETWORKS = ("unet_caching", "unet_cached")
GUIDED_NETWORKS = ("unet_controlnet",)
