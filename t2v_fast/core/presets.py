"""Random-weight model presets built from configs.

Weights cannot always be downloaded (offline machines, CI), so every component can also be built from its config with
deterministic random weights. The architecture, shapes and cost are those of the real model; only the values differ.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

from t2v_fast.core.families import family_of_unet
from t2v_fast.errors import UserError

if TYPE_CHECKING:  # imported where used: the command line lists the presets without loading torch
    import torch
    from transformers import CLIPTokenizer

TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "unet": {
        "block_out_channels": [32, 64],
        "layers_per_block": 1,
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
        "cross_attention_dim": 32,
        "attention_head_dim": 8,
        "norm_num_groups": 8,
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
    },
    "vae": {
        "block_out_channels": [16, 16, 32, 32],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "latent_channels": 4,
        "sample_size": 64,
        "scaling_factor": 0.18215,
    },
    "text_encoder": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "max_position_embeddings": 77,
        "vocab_size": 1000,
        "projection_dim": 32,
        "hidden_act": "quick_gelu",
        "bos_token_id": 512,
        "eos_token_id": 513,
        "pad_token_id": 513,
    },
    "scheduler": {
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
        "steps_offset": 1,
        "set_alpha_to_one": False,
        "clip_sample": False,
    },
}


# Big enough that a 2-core CPU spends its time in the networks (not in Python), small enough for minutes per run:
# SD's shape (3 attention levels, 4-level VAE, CLIP text encoder) at 128×128 and a quarter of SD's widths.
SMALL_CONFIGS: dict[str, dict[str, Any]] = {
    "unet": {
        "block_out_channels": [64, 128, 256],
        "layers_per_block": 1,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "cross_attention_dim": 256,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
        "sample_size": 16,
        "in_channels": 4,
        "out_channels": 4,
    },
    "vae": {**TINY_CONFIGS["vae"], "block_out_channels": [32, 64, 64, 64], "sample_size": 128},
    "text_encoder": {
        **TINY_CONFIGS["text_encoder"],
        "hidden_size": 256,
        "intermediate_size": 1024,
        "num_attention_heads": 4,
        "num_hidden_layers": 4,
        "projection_dim": 256,
    },
    "scheduler": TINY_CONFIGS["scheduler"],
}


# ModelScope text-to-video's shape (a 3D UNet with temporal convolutions and attention, a CLIP text encoder with GELU)
# at the tiny preset's widths: seconds per video on a CPU.
MODELSCOPE_TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "unet": {
        **TINY_CONFIGS["unet"],
        "_class_name": "UNet3DConditionModel",
        "down_block_types": ["CrossAttnDownBlock3D", "DownBlock3D"],
        "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D"],
    },
    "vae": TINY_CONFIGS["vae"],
    "text_encoder": {**TINY_CONFIGS["text_encoder"], "hidden_act": "gelu"},
    "scheduler": TINY_CONFIGS["scheduler"],
}


# Instruct-Pix2Pix's shape (Stable Diffusion's UNet taking the input frame's latents beside the noise: 8 channels) at
# the tiny preset's widths, with the checkpoint's Euler ancestral scheduler.
PIX2PIX_TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "unet": {**TINY_CONFIGS["unet"], "in_channels": 8},
    "vae": TINY_CONFIGS["vae"],
    "text_encoder": TINY_CONFIGS["text_encoder"],
    "scheduler": {**TINY_CONFIGS["scheduler"], "_class_name": "EulerAncestralDiscreteScheduler"},
}


def _packaged_configs(model: str, base: str | None = None) -> dict[str, dict[str, Any]]:
    """A packaged model's configs; those its folder lacks are `base`'s (Instruct-Pix2Pix's text encoder and VAE are
    Stable Diffusion 1.5's)."""
    configs = resources.files("t2v_fast") / "configs"
    found = {}
    for name in ("unet", "vae", "text_encoder", "scheduler"):
        path = configs / model / f"{name}.json"
        found[name] = json.loads(
            (path if path.is_file() or base is None else configs / base / f"{name}.json").read_text()
        )
    return found


PRESETS: dict[str, Callable[[], dict[str, dict[str, Any]]]] = {
    "tiny-random": lambda: TINY_CONFIGS,
    "small-random": lambda: SMALL_CONFIGS,
    "sd15-random": lambda: _packaged_configs("sd15"),
    "modelscope-tiny-random": lambda: MODELSCOPE_TINY_CONFIGS,
    "modelscope-random": lambda: _packaged_configs("modelscope-t2v-1.7b"),
    "pix2pix-tiny-random": lambda: PIX2PIX_TINY_CONFIGS,
    "pix2pix-random": lambda: _packaged_configs("instruct-pix2pix", base="sd15"),
}


def _tiny_controlnet_config() -> dict[str, Any]:
    """The ControlNet of `tiny-random`'s UNet, as `ControlNetModel.from_unet` derives one, with a small control-map
    encoder."""
    unet = TINY_CONFIGS["unet"]
    keys = ["cross_attention_dim", "block_out_channels", "layers_per_block", "in_channels", "down_block_types"]
    keys += ["attention_head_dim", "norm_num_groups"]
    return {key: unet[key] for key in keys} | {"conditioning_embedding_out_channels": [8, 16, 32, 32]}


def _packaged_controlnet_config() -> dict[str, Any]:
    return json.loads((resources.files("t2v_fast") / "configs" / "sd15" / "controlnet.json").read_text())


# Random-weight ControlNets fitting the base presets of the same size: `tiny-random`'s, and the SD 1.5 ControlNets'
# architecture (lllyasviel/sd-controlnet-canny, -depth, -openpose: one config, 361 M parameters) for `sd15-random`.
CONTROLNET_PRESETS: dict[str, Callable[[], dict[str, Any]]] = {
    "tiny-random-controlnet": _tiny_controlnet_config,
    "sd15-controlnet-random": _packaged_controlnet_config,
}


# The ControlNet preset that fits each base preset's UNet: what the web app and the benchmark pair with a base.
CONTROLNET_OF_PRESET = {"tiny-random": "tiny-random-controlnet", "sd15-random": "sd15-controlnet-random"}


def preset_configs(name: str) -> dict[str, dict[str, Any]]:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]()


def byte_level_tokenizer(max_length: int = 77) -> CLIPTokenizer:
    """A CLIP tokenizer whose vocabulary is the 256 byte symbols, each alone or ending a word, and no merges.

    The real CLIP vocabulary is not always at hand; this one tokenizes any text the same way CLIP's BPE would before
    merges, so ids stay below 514 and fit every CLIP text encoder's embedding table.
    """
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    vocab = {symbol: i for i, symbol in enumerate(symbols)}
    vocab.update({f"{symbol}</w>": len(symbols) + i for i, symbol in enumerate(symbols)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def strip_meta(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if not k.startswith("_") and k != "model_type"}


def build_networks(configs: dict[str, dict[str, Any]]) -> dict[str, torch.nn.Module]:
    """Text encoder, UNet (2D or 3D, by its family) and VAE from their configs, initialised by the current torch RNG
    (and device context)."""
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel

    unet_class = getattr(diffusers, family_of_unet(configs["unet"], configs["vae"]["latent_channels"]).unet_class)
    return {
        "text_encoder": CLIPTextModel(CLIPTextConfig(**strip_meta(configs["text_encoder"]))),
        "unet": unet_class(**strip_meta(configs["unet"])),
        "vae": diffusers.AutoencoderKL(**strip_meta(configs["vae"])),
    }


def build_random_components(name: str, seed: int = 0) -> dict[str, Any]:
    """Build tokenizer, text encoder, UNet, VAE and scheduler of a preset with weights fixed by `seed`.

    The scheduler is the family's (`scheduler_from_config`): DDIM for the text-to-video presets, as both families'
    reference checkpoints run; Instruct-Pix2Pix's Euler ancestral."""
    import torch

    configs = preset_configs(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        networks = build_networks(configs)
    return {"tokenizer": preset_tokenizer(configs), "scheduler": preset_scheduler(configs), **networks}


def preset_tokenizer(configs: dict[str, dict[str, Any]]) -> CLIPTokenizer:
    return byte_level_tokenizer(configs["text_encoder"]["max_position_embeddings"])


def preset_scheduler(configs: dict[str, dict[str, Any]]) -> Any:
    from t2v_fast.core.models import scheduler_from_config  # it loads diffusers; the presets' table does not

    return scheduler_from_config(
        dict(configs["scheduler"]), family_of_unet(configs["unet"], configs["vae"]["latent_channels"])
    )
