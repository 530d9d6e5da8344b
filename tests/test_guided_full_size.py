"""Full-size guided export: sd15-random with sd15-controlnet-random (the SD 1.5 ControlNets' architecture, 361 M
parameters) to ONNX on the CPU, fp32; one `unet_controlnet` call on ONNX Runtime against PyTorch.

Slow (minutes, ~20 GB of memory): `pytest -m slow`. Prints sizes, export times and errors for the record.
"""

import json
import subprocess

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import CLI

from t2v_fast.core.models import load_components
from t2v_fast.core.networks import NETWORKS

pytestmark = pytest.mark.slow

# fp32: accumulation order only, through the ControlNet and the UNet (as the plain UNet's full-size test allows).
TOLERANCE = 1e-3


def test_sd15_controlnet_exports_and_one_call_matches_pytorch(tmp_path):
    out = tmp_path / "sd15-controlnet"
    # Two 860 M-parameter UNets' worth of graphs (the plain UNet and the ControlNet UNet): longer than `run_cli`'s
    # ten minutes on a 2-core CPU.
    result = subprocess.run(
        [*CLI, "export", "sd15-random", "--controlnet", "sd15-controlnet-random", "--out", str(out),
         "--frames", "2", "--height", "256", "--width", "256", "--quiet"],
        capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "engine.json").read_text())
    assert "unet_controlnet" in manifest["components"]
    sizes = {name: round(entry["bytes"] / 2**20) for name, entry in manifest["components"].items()}
    times = {name: entry["export_seconds"] for name, entry in manifest["components"].items()}
    print(f"\nsd15-random + sd15-controlnet-random fp32: MiB {sizes}, export s {times}")

    components = load_components("sd15-random", device="cpu", dtype="float32", controlnet="sd15-controlnet-random")
    parameters = sum(p.numel() for p in components.controlnet.parameters())
    assert 355e6 < parameters < 365e6, parameters  # the SD 1.5 ControlNet: 361 M
    reference = NETWORKS["unet_controlnet"].build(components).eval()
    session = ort.InferenceSession(str(out / "unet_controlnet.onnx"), providers=["CPUExecutionProvider"])
    # The export's own size (256², 2 frames), then 288×512 at 3 frames on the same graph.
    for videos, frames, height, width in [(2, 2, 256, 256), (1, 3, 288, 512)]:
        torch.manual_seed(0)
        sample = torch.randn(videos, frames, 4, height // 8, width // 8)
        text = torch.randn(videos, 77, 768)
        control = torch.rand(videos, frames, 3, height, width)
        timestep, scale = torch.tensor(501), torch.tensor(1.0)
        with torch.no_grad():
            expected = reference(sample, timestep, text, control, scale).numpy()
        feeds = {
            "sample": sample.numpy(),
            "timestep": timestep.numpy(),
            "encoder_hidden_states": text.numpy(),
            "control": control.numpy(),
            "controlnet_scale": scale.numpy(),
        }
        actual = session.run(None, feeds)[0]
        error = np.abs(actual - expected)
        print(
            f"unet_controlnet {videos}×{frames}×{height}×{width}: max abs err {error.max():.3e}, mean"
            f" {error.mean():.3e}, output std {expected.std():.3f}"
        )
        assert error.max() <= TOLERANCE
