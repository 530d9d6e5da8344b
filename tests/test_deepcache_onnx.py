"""Fast mode (DeepCache) on ONNX Runtime: `t2v-fast export --fast` writes the two UNet graphs, and ONNX Runtime
runs fast mode with them as the torch backend does (2/255 per pixel, at a frame count and size the export never
saw); a request they cannot serve is refused in one line. `t2v-fast check` holds them to torch (1e-4) in
`tests/test_export_onnx.py`, on the same export (the session's, `conftest.tiny_engines`).

TensorRT builds engines from the same graphs with the UNet's profiles: what of that runs without a GPU (the
profiles) is checked here; building and running them is not.
"""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch
from conftest import assert_is_moving_video, max_pixel_diff

from t2v_fast import load_pipeline
from t2v_fast.backends.onnxruntime import provider_options
from t2v_fast.core.engine_dir import EngineDir
from t2v_fast.core.profiles import default_ranges
from t2v_fast.errors import UserError

TOLERANCE = 2
# 5 frames at 72×88 (9×11 latents): neither the export's 8 frames nor its 64×64.
SETTINGS = dict(frames=5, height=72, width=88, steps=10, t0=6, t1=8, seed=3, progress=False)
FAST_GRAPHS = ("unet_caching", "unet_cached")


@pytest.fixture(scope="module")
def fast_engines(tiny_engines):
    """The session's export of `tiny-random`, made with `--fast` (`conftest.tiny_engines`)."""
    return tiny_engines


@pytest.fixture(scope="module")
def onnxruntime_pipeline(fast_engines):
    return load_pipeline(str(fast_engines), backend="onnxruntime")


@pytest.fixture(scope="module")
def torch_pipeline():
    return load_pipeline("tiny-random", device="cpu", dtype="float32")


@pytest.mark.parametrize("interval", [3, 2, 1], ids=["interval 3", "interval 2", "exact path"])
def test_onnxruntime_fast_mode_equals_torch_fast_mode(onnxruntime_pipeline, torch_pipeline, monkeypatch, interval):
    backend, ran = onnxruntime_pipeline.backend, []
    run = backend._run

    def recording(component, **inputs):
        ran.append(component)
        return run(component, **inputs)

    monkeypatch.setattr(backend, "_run", recording)
    ours = onnxruntime_pipeline.generate_video("a lighthouse", cache_interval=interval, **SETTINGS)
    reference = torch_pipeline.generate_video("a lighthouse", cache_interval=interval, **SETTINGS)
    assert ours.frames.shape == (5, 72, 88, 3)
    assert_is_moving_video(ours.frames)
    assert max_pixel_diff(ours.frames, reference.frames) <= TOLERANCE
    assert ours.metadata["params"]["cache_interval"] == interval
    unet_calls = {name for name in ran if name.startswith("unet")}
    assert unet_calls == ({"unet"} if interval == 1 else set(FAST_GRAPHS))


def test_engine_json_records_both_graphs(fast_engines):
    manifest = json.loads((fast_engines / "engine.json").read_text())
    assert manifest["export"]["fast"] is True
    assert set(manifest["components"]) == {"text_encoder", "unet", "vae_decoder", *FAST_GRAPHS}
    latents = ["videos", "frames", 4, "latent_height", "latent_width"]
    feature = {
        "name": "feature",
        "dtype": "float32",
        "shape": ["videos", "frames", 32, "latent_height", "latent_width"],
    }
    noise = {"name": "noise", "dtype": "float32", "shape": latents}
    caching, cached = (manifest["components"][name] for name in FAST_GRAPHS)
    assert [i["name"] for i in caching["inputs"]] == ["sample", "timestep", "encoder_hidden_states"]
    assert caching["outputs"] == [noise, feature]
    assert cached["inputs"][-1] == feature and cached["outputs"] == [noise]
    assert caching["axis_ranges"] == cached["axis_ranges"] == manifest["components"]["unet"]["axis_ranges"]
    assert caching["config"]["cache_branch"] == cached["config"]["cache_branch"] == 0
    assert EngineDir.load(fast_engines).networks == ("text_encoder", "unet", "vae_decoder", *FAST_GRAPHS)


def test_a_modified_fast_graph_is_refused(fast_engines, tmp_path):
    copy = tmp_path / "engines"
    shutil.copytree(fast_engines, copy)
    with (copy / "unet_cached.onnx").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(UserError, match=r"unet_cached\.onnx does not match"):
        EngineDir.load(copy)


def test_fast_graph_profiles_are_the_unets_with_the_feature(fast_engines):
    engine_dir = EngineDir.load(fast_engines)
    for static in (True, False):
        profiles = default_ranges(engine_dir, static=static).profiles(engine_dir.card)
        for name in FAST_GRAPHS:
            assert [p["sample"] for p in profiles[name]] == [p["sample"] for p in profiles["unet"]]
        for profile in profiles["unet_cached"]:
            assert [[*s[:2], 32, *s[3:]] for s in profile["sample"]] == profile["feature"]
    options = provider_options(engine_dir, "unet_cached", "TensorrtExecutionProvider", 0)
    assert options["trt_profile_max_shapes"] == "sample:8x24x4x8x8,encoder_hidden_states:8x77x32,feature:8x24x32x8x8"


def test_tensorrt_builds_an_engine_for_each_fast_graph(fast_engines, tmp_path, monkeypatch):
    """`t2v-fast build` over an export with fast mode's graphs, through stand-ins for Polygraphy's documented entry
    points (TensorRT cannot be installed here): five engines recorded, the cached one's profile with the feature."""
    from export import tensorrt_build

    profile: dict[str, list[int]] = {}  # input -> max shape, of the profile being made
    built: dict[str, dict[str, list[int]]] = {}  # ONNX file -> its profile (added just before the file is parsed)

    def network_from_onnx_path(path, strongly_typed):
        built[Path(path).stem] = dict(profile)
        profile.clear()

    polygraphy = types.ModuleType("polygraphy.backend.trt")
    polygraphy.Profile = lambda: types.SimpleNamespace(add=lambda name, min, opt, max: profile.update({name: max}))
    polygraphy.CreateConfig = lambda **kwargs: kwargs
    polygraphy.network_from_onnx_path = network_from_onnx_path
    polygraphy.engine_from_network = lambda network, config, save_timing_cache: b"plan"
    polygraphy.save_engine = lambda engine, path: Path(path).write_bytes(engine)
    for name in ("polygraphy", "polygraphy.backend"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "polygraphy.backend.trt", polygraphy)
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="11.4.0"))
    monkeypatch.setattr(tensorrt_build, "compute_capability", lambda device=None: "9.0")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "stand-in GPU")
    folder = tmp_path / "engines"
    shutil.copytree(fast_engines, folder)
    engine_dir = EngineDir.load(folder)
    tensorrt_build.build_engines(engine_dir, default_ranges(engine_dir, static=False), progress=False)
    assert {record.component for record in EngineDir.load(folder).engines().values()} == set(engine_dir.networks)
    unet = {"sample": [8, 24, 4, 8, 8], "timestep": [], "encoder_hidden_states": [8, 77, 32]}  # max shapes
    assert built["unet"] == built["unet_caching"] == unet
    assert built["unet_cached"] == {**unet, "feature": [8, 24, 32, 8, 8]}


def test_another_branch_and_cuda_graphs_are_refused_on_onnxruntime(onnxruntime_pipeline, monkeypatch):
    request = dict(cache_interval=2, frames=2, steps=3, progress=False)
    with pytest.raises(UserError, match=r"^exported fast graphs are for cache_branch 0; cache_branch 3 runs on the"):
        onnxruntime_pipeline.generate_video("a cat", cache_branch=3, **request)
    # CUDA graphs need the CUDA provider; the refusal itself is the backend's, whatever the provider.
    monkeypatch.setattr(onnxruntime_pipeline.backend, "cuda_graph", True)
    with pytest.raises(UserError, match=r"does not run with --cuda-graph"):
        onnxruntime_pipeline.generate_video("a cat", **request)
