"""Full-size ModelScope text-to-video: `modelscope-random` (the 1.7B architecture) exported to ONNX on the CPU, one
UNet call on ONNX Runtime against PyTorch, and a short video end to end.

Slow (minutes, ~15 GB of memory): `pytest -m slow`. Prints parameter counts, sizes, export times and errors.
"""

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import run_cli

from t2v_fast.core.models import load_components
from t2v_fast.families.modelscope.unet3d import VideoUNet3D

pytestmark = pytest.mark.slow
TOLERANCE = 1e-3  # fp32: accumulation order only, through 4 levels of spatial and temporal layers


@pytest.fixture(scope="module")
def components():
    return load_components("modelscope-random", device="cpu", dtype="float32")


def test_the_architecture_is_modelscope_1_7b(components):
    counts = {
        name: sum(p.numel() for p in getattr(components, name).parameters()) for name in ("text_encoder", "unet", "vae")
    }
    print(f"\nmodelscope-random parameters: {counts}, total {sum(counts.values()):,}")
    assert type(components.unet).__name__ == "UNet3DConditionModel" and components.card.family == "modelscope"
    assert 1.6e9 < counts["unet"] + counts["text_encoder"] < 1.9e9  # "≈1.7 B parameters together"
    assert components.native_size == 256 and components.text_encoder.config.hidden_size == 1024


def test_export_loads_in_onnxruntime_and_one_unet_call_matches(tmp_path, components):
    out = tmp_path / "modelscope-fp32"
    args = ["--frames", "2", "--height", "128", "--width", "128", "--quiet"]
    result = run_cli("export", "modelscope-random", "--out", str(out), *args)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "engine.json").read_text())
    unet = manifest["components"]["unet"]
    assert unet["external_data"] == "unet.onnx.data" and (out / "unet.onnx.data").stat().st_size > 2**31
    sizes = {name: round(entry["bytes"] / 2**20) for name, entry in manifest["components"].items()}
    times = {name: entry["export_seconds"] for name, entry in manifest["components"].items()}
    print(f"\nmodelscope-random fp32: MiB {sizes}, export s {times}")

    session = ort.InferenceSession(str(out / "unet.onnx"), providers=["CPUExecutionProvider"])
    module = VideoUNet3D(components.unet).eval()
    # Another size and frame count than the export's: 4 frames at 256×256 (32×32 latents), 2 videos (guidance).
    sample = torch.randn(2, 4, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    text = torch.randn(2, 77, 1024, generator=torch.Generator().manual_seed(1))
    timestep = torch.tensor(501)
    with torch.no_grad():
        expected = module(sample, timestep, text).numpy()
    feeds = {"sample": sample.numpy(), "timestep": timestep.numpy(), "encoder_hidden_states": text.numpy()}
    actual = session.run(None, feeds)[0]
    error = np.abs(actual - expected)
    print(
        f"UNet {tuple(sample.shape)}: max abs err {error.max():.3e}, mean {error.mean():.3e}, std {expected.std():.3f}"
    )
    assert actual.shape == expected.shape and error.max() <= TOLERANCE


def test_modelscope_random_generates_a_video():
    from t2v_fast import load_pipeline

    pipeline = load_pipeline("modelscope-random", device="cpu", dtype="float32")
    video = pipeline.generate_video("a cat", frames=3, height=64, width=64, steps=2, seed=0, progress=False)
    assert video.frames.shape == (3, 64, 64, 3) and video.frames.std() > 1
