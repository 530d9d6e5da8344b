"""Presets are deterministic, full-size presets have the real architecture, and saved folders round-trip."""

import json

import torch

from t2v_fast.core.models import load_components, weights_sha256
from t2v_fast.core.presets import build_networks, build_random_components, preset_configs


def test_tiny_preset_is_deterministic():
    a, b = build_random_components("tiny-random"), build_random_components("tiny-random")
    assert weights_sha256(a["unet"], a["vae"], a["text_encoder"]) == weights_sha256(
        b["unet"], b["vae"], b["text_encoder"]
    )


def test_saved_folder_round_trips_weights(tiny_folder):
    assert load_components(str(tiny_folder)).weights_sha256 == load_components("tiny-random").weights_sha256
    index = json.loads((tiny_folder / "model_index.json").read_text())
    assert index["scheduler"] == ["diffusers", "DDIMScheduler"]


def test_sd15_preset_has_the_stable_diffusion_15_architecture():
    """Built on the meta device: the real shapes without allocating a billion parameters."""
    with torch.device("meta"):
        networks = build_networks(preset_configs("sd15-random"))
    counts = {name: sum(p.numel() for p in module.parameters()) for name, module in networks.items()}
    assert counts == {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}
