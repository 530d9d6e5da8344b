"""NaN/Inf latents and black frames stop generation with an error that suggests another dtype.

The failures are produced the way they happen in practice, inside the real networks: a poisoned UNet weight gives
NaN noise predictions, and a VAE whose output saturates low gives black frames.
"""

import copy

import pytest
import torch

from t2v_fast.backends.torch import TorchBackend
from t2v_fast.errors import NumericalError
from t2v_fast.families.text2video_zero.pipeline import TextToVideoZeroPipeline

SMALL = dict(frames=2, height=64, width=64, steps=3, progress=False, seed=0)


@pytest.fixture
def components(pipeline, tiny_folder):
    from t2v_fast.core.models import load_components

    return load_components(str(tiny_folder), device="cpu", dtype="float32")


def _pipeline(components):
    return TextToVideoZeroPipeline(components.tokenizer, components.scheduler, TorchBackend(components))


def test_nan_latents_raise(components):
    with torch.no_grad():
        components.unet.conv_out.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(NumericalError, match=r"NaN or Inf in the latents.*try another dtype"):
        _pipeline(components).generate_video("a cat", **SMALL)


def test_black_frames_raise(components):
    with torch.no_grad():
        components.vae.decoder.conv_out.bias.fill_(-1e4)
    with pytest.raises(NumericalError, match=r"entirely black.*try another dtype"):
        _pipeline(components).generate_video("a cat", **SMALL)


def test_healthy_model_passes(components):
    video = _pipeline(copy.deepcopy(components)).generate_video("a cat", **SMALL)
    assert video.frames.max() > 0
