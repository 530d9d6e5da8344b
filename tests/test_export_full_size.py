"""Full-size export: sd15-random (860 M-parameter UNet) to ONNX on the CPU, fp32 with external data and fp16.

Slow (minutes, ~15 GB of memory): `pytest -m slow`. Prints sizes, export times and errors for the record.
"""

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import run_cli

from t2v_fast.attention_plugin import VideoUNet
from t2v_fast.core.models import load_components

pytestmark = pytest.mark.slow

# fp32: accumulation order only. fp16 graph against the fp32 PyTorch UNet: half-precision rounding through 25 blocks.
TOLERANCES = {"fp32": 1e-3, "fp16": 5e-2}


@pytest.fixture(scope="module")
def reference_unet():
    return VideoUNet(load_components("sd15-random", device="cpu", dtype="float32").unet).eval()


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_sd15_export_loads_in_onnxruntime_and_matches(tmp_path, reference_unet, dtype):
    out = tmp_path / f"sd15-{dtype}"
    result = run_cli(
        "export",
        "sd15-random",
        "--out",
        str(out),
        "--dtype",
        dtype,
        "--frames",
        "2",
        "--height",
        "256",
        "--width",
        "256",
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "engine.json").read_text())
    unet = manifest["components"]["unet"]
    if dtype == "fp32":
        assert unet["external_data"] == "unet.onnx.data" and (out / "unet.onnx.data").stat().st_size > 2**31
    recorded = {f for entry in manifest["components"].values() for f in (entry["file"], entry["external_data"]) if f}
    assert recorded == {p.name for p in out.glob("*.onnx*")}, "every ONNX file on disk is recorded (and hashed)"

    session = ort.InferenceSession(str(out / "unet.onnx"), providers=["CPUExecutionProvider"])
    sizes = {name: round(entry["bytes"] / 2**20) for name, entry in manifest["components"].items()}
    times = {name: entry["export_seconds"] for name, entry in manifest["components"].items()}
    print(f"\nsd15-random {dtype}: MiB {sizes}, export s {times}")
    # The export's own size (256², 32×32 latents), then 288×512 (36×64 latents: 36 is not a multiple of 8, so the
    # upsamplers take their skip connections' sizes), on the same graph.
    for shape in [(2, 3, 4, 32, 32), (2, 1, 4, 36, 64)]:
        torch.manual_seed(0)
        sample, text, timestep = torch.randn(*shape), torch.randn(shape[0], 77, 768), torch.tensor(501)
        with torch.no_grad():
            expected = reference_unet(sample, timestep, text).numpy()
        numpy_dtype = np.float16 if dtype == "fp16" else np.float32
        feeds = {
            "sample": sample.numpy().astype(numpy_dtype),
            "timestep": timestep.numpy(),
            "encoder_hidden_states": text.numpy().astype(numpy_dtype),
        }
        actual = session.run(None, feeds)[0].astype(np.float32)
        error = np.abs(actual - expected)
        print(f"UNet {shape}: max abs err {error.max():.3e}, mean {error.mean():.3e}, output std {expected.std():.3f}")
        assert error.max() <= TOLERANCES[dtype]
