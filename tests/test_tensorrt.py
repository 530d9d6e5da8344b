"""TensorRT: engine selection, stale-engine refusal and profile checks run everywhere; build/load/run need a GPU.

The GPU tests skip, saying why, where `tensorrt` or CUDA is missing (always, where t2v-fast is developed and in CI).
"""

import importlib.util
import json
import shutil

import numpy as np
import pytest
import torch
from conftest import max_pixel_diff, run_cli

from t2v_fast.engine_dir import EngineDir
from t2v_fast.errors import UserError
from t2v_fast.tensorrt_backend import AxisRange, BuildRanges, check_in_profile, engine_key, select_engine

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
gpu = pytest.mark.skipif(
    not (HAS_TENSORRT and torch.cuda.is_available()),
    reason=f"needs TensorRT and a CUDA GPU (tensorrt installed: {HAS_TENSORRT}, CUDA: {torch.cuda.is_available()})",
)


def _record_engine(engine_dir: EngineDir, component="unet", trt="10.13.0", capability="9.0", **overrides):
    key = engine_key(component, trt, capability, "fp16")
    entry = {
        "component": component,
        "file": f"{key}.plan",
        "tensorrt_version": trt,
        "compute_capability": capability,
        "onnx_sha256": engine_dir.manifest["components"][component]["sha256"],
        "weights_sha256": engine_dir.source["weights_sha256"],
        "profile": {},
        **overrides,
    }
    (engine_dir.path / entry["file"]).write_bytes(b"engine")
    engine_dir.manifest["engines"][key] = entry
    return entry


@pytest.fixture
def engine_dir(tiny_engines, tmp_path):
    copy = tmp_path / "engines"
    shutil.copytree(tiny_engines, copy)
    return EngineDir.load(copy)


def test_matching_engine_is_selected(engine_dir):
    entry = _record_engine(engine_dir)
    assert select_engine(engine_dir, "unet", "10.13.0", "9.0") == entry


def test_engine_of_another_tensorrt_or_gpu_is_refused(engine_dir):
    _record_engine(engine_dir)
    with pytest.raises(UserError, match=r"built for TensorRT 10\.13\.0 on sm_9\.0, not TensorRT 10\.14\.0 .*rebuild"):
        select_engine(engine_dir, "unet", "10.14.0", "9.0")
    with pytest.raises(UserError, match=r"not TensorRT 10\.13\.0 on sm_8\.0; rebuild"):
        select_engine(engine_dir, "unet", "10.13.0", "8.0")


@pytest.mark.parametrize("field", ["onnx_sha256", "weights_sha256"])
def test_stale_engine_is_refused(engine_dir, field):
    _record_engine(engine_dir, **{field: "f" * 64})
    with pytest.raises(UserError, match=r"built from another export .*rebuild with: t2v-fast build"):
        select_engine(engine_dir, "unet", "10.13.0", "9.0")


def test_missing_engine_says_to_build(engine_dir):
    with pytest.raises(UserError, match=r"no TensorRT engine for vae_decoder .*t2v-fast build"):
        select_engine(engine_dir, "vae_decoder", "10.13.0", "9.0")


def test_profiles_follow_the_ranges(engine_dir):
    ranges = BuildRanges(
        AxisRange(1, 1, 2), AxisRange(2, 8, 24), AxisRange.parse("64", "height"), AxisRange(64, 64, 128)
    )
    profiles = ranges.profiles(engine_dir.info)
    assert profiles["unet"]["sample"] == [[2, 2, 4, 8, 8], [2, 8, 4, 8, 8], [4, 24, 4, 8, 16]]
    assert profiles["unet"]["encoder_hidden_states"] == [[2, 77, 32], [2, 77, 32], [4, 77, 32]]
    assert profiles["text_encoder"]["input_ids"] == [[2, 77], [2, 77], [4, 77]]
    assert profiles["vae_decoder"]["latents"] == [[1, 4, 8, 8], [8, 4, 8, 8], [8, 4, 8, 16]]
    with pytest.raises(UserError, match="multiples of 16"):
        BuildRanges(AxisRange(1, 1, 1), AxisRange(8, 8, 8), AxisRange(72, 72, 72), AxisRange(64, 64, 64)).profiles(
            engine_dir.info
        )


def test_shape_outside_profile_names_the_range():
    profile = [[2, 2, 4, 8, 8], [2, 8, 4, 8, 8], [4, 24, 4, 8, 16]]
    check_in_profile("unet", "sample", (2, 24, 4, 8, 16), profile)
    with pytest.raises(
        UserError, match=r"shape \[2, 25, 4, 8, 8\], outside the engine's profile \[2, 2, 4, 8, 8\] \.\."
    ):
        check_in_profile("unet", "sample", (2, 25, 4, 8, 8), profile)


@pytest.mark.parametrize("text", ["0", "3:2:4", "a:b:c", "1:2"])
def test_bad_ranges_are_refused(text):
    with pytest.raises(UserError, match="MIN:OPT:MAX"):
        AxisRange.parse(text, "frames")


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_build_without_tensorrt_names_the_extra(tiny_engines):
    result = run_cli("build", str(tiny_engines))
    assert result.returncode == 2
    assert "pip install 't2v-fast[tensorrt]'" in result.stderr and "Traceback" not in result.stderr


@gpu
def test_build_load_run_and_refuse_stale(tiny_engines, tmp_path):
    from t2v_fast import load_pipeline

    folder = tmp_path / "engines"
    shutil.copytree(tiny_engines, folder)
    result = run_cli("build", str(folder), "--precision", "fp32", "--static")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((folder / "engine.json").read_text())
    assert {e["component"] for e in manifest["engines"].values()} == {"text_encoder", "unet", "vae_decoder"}
    assert all((folder / e["file"]).is_file() for e in manifest["engines"].values())

    check = run_cli("check", str(folder))
    assert check.returncode == 0 and any(line.startswith("tensorrt") for line in check.stdout.splitlines())

    settings = dict(frames=8, height=64, width=64, steps=6, seed=2, progress=False)
    ours = load_pipeline(str(folder), backend="tensorrt").generate("a cat", **settings)
    reference = load_pipeline("tiny-random", device="cpu").generate("a cat", **settings)
    assert max_pixel_diff(ours.frames, reference.frames) <= 2 and np.asarray(ours.frames).std() > 10

    for entry in manifest["engines"].values():
        entry["onnx_sha256"] = "0" * 64
    (folder / "engine.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="rebuild"):
        load_pipeline(str(folder), backend="tensorrt")
