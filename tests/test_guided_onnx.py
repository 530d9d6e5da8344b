"""Guided video on ONNX Runtime: `t2v-fast export --controlnet` writes `unet_controlnet` (ControlNet and UNet in one
graph) beside the plain networks, ONNX Runtime runs guided video with it as the torch backend does (2/255 per pixel,
at a frame count and size the export never saw), `t2v-fast check` holds it to torch, and an export without a
ControlNet refuses a guided request in one line that says how to make one with it.

TensorRT builds an engine from the same graph with the UNet's profiles and the control maps': what of that runs
without a GPU (the profiles, a build through stand-ins for Polygraphy) is checked here; building and running it is not.
"""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import max_pixel_diff

from t2v_fast import load_pipeline
from t2v_fast.backends.onnxruntime import provider_options
from t2v_fast.core.engine_dir import EngineDir
from t2v_fast.core.profiles import default_ranges
from t2v_fast.errors import UserError
from t2v_fast.families.guided.pipeline import GuidedPipeline

CONTROLNET = "tiny-random-controlnet"
TOLERANCE = 2  # /255 per pixel
# 4 frames at 72×88 (9×11 latents): neither the export's 8 frames nor its 64×64.
REQUEST = dict(annotator="canny", steps=3, seed=1, height=72, width=88, progress=False)
PLAIN = ("text_encoder", "unet", "vae_decoder")


def moving_square(frames: int, height: int, width: int) -> np.ndarray:
    """A bright square moving right over a dark gradient, uint8 `(F, H, W, 3)`: edges for the Canny annotator."""
    video = np.zeros((frames, height, width, 3), np.uint8)
    video[...] = (np.arange(width) * 60 // width)[None, None, :, None]
    for k in range(frames):
        x0 = 6 + 8 * k
        video[k, height // 4 : height // 4 + height // 3, x0 : x0 + width // 4] = (230, 200, 40)
    return video


CONTROL = moving_square(4, 72, 88)


@pytest.fixture(scope="module")
def plain_engines(guided_engines, tmp_path_factory) -> Path:
    """The same export as made without --controlnet: its card records no ControlNet and it has no
    `unet_controlnet` (every other file is the same as a plain export's)."""
    folder = tmp_path_factory.mktemp("plain") / "engines"
    shutil.copytree(guided_engines, folder)
    manifest = json.loads((folder / "engine.json").read_text())
    manifest["model_info"].update(controlnet="", controlnet_sha256="")
    del manifest["components"]["unet_controlnet"]
    (folder / "engine.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    (folder / "unet_controlnet.onnx").unlink()
    return folder


def test_onnxruntime_guided_video_equals_torch(guided_engines, monkeypatch):
    ours = load_pipeline(str(guided_engines), backend="onnxruntime")
    # The torch backend on the engine directory loads the ControlNet it records.
    reference = load_pipeline(str(guided_engines), device="cpu", dtype="float32")
    assert isinstance(ours, GuidedPipeline) and isinstance(reference, GuidedPipeline)
    assert reference.backend.card.controlnet == CONTROLNET
    backend, ran = ours.backend, []
    run = backend._run

    def recording(component, **inputs):
        ran.append(component)
        return run(component, **inputs)

    monkeypatch.setattr(backend, "_run", recording)
    video = ours.generate_video("a robot", control=CONTROL, **REQUEST)
    expected = reference.generate_video("a robot", control=CONTROL, **REQUEST)
    assert video.frames.shape == (4, 72, 88, 3)
    assert video.frames.std() > 10, "frames are almost constant"
    assert max_pixel_diff(video.frames, expected.frames) <= TOLERANCE
    # The comparison is not trivial: the graph's ControlNet does something (at scale 0 the video is another one).
    unguided = ours.generate_video("a robot", control=CONTROL, controlnet_scale=0.0, **REQUEST)
    assert max_pixel_diff(unguided.frames, video.frames) > 10
    assert {name for name in ran if name.startswith("unet")} == {"unet_controlnet"}
    model = video.metadata["model"]
    assert model["task"] == "guided" and model["controlnet"]["id"] == CONTROLNET
    assert model["controlnet"] == expected.metadata["model"]["controlnet"]
    assert len(model["controlnet"]["weights_sha256"]) == 64


def test_the_command_line_runs_guided_video_from_the_engine_directory(guided_engines, cli, tmp_path):
    from t2v_fast.core.video import write_mp4

    clip, out = tmp_path / "clip.mp4", tmp_path / "guided.mp4"
    write_mp4(CONTROL[:2], clip, fps=4)
    result = cli(
        "generate", "a robot", "--model", str(guided_engines), "--backend", "onnxruntime", "--control", str(clip),
        "--steps", "2", "--seed", "0", "--out", str(out), "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["backend"] == "onnxruntime" and meta["model"]["task"] == "guided"
    assert meta["model"]["controlnet"]["id"] == CONTROLNET


def test_engine_json_records_the_controlnet_and_its_graph(guided_engines):
    manifest = json.loads((guided_engines / "engine.json").read_text())
    assert manifest["model_info"]["controlnet"] == CONTROLNET
    assert len(manifest["model_info"]["controlnet_sha256"]) == 64
    assert set(manifest["components"]) == {*PLAIN, "unet_controlnet"}
    guided, unet = manifest["components"]["unet_controlnet"], manifest["components"]["unet"]
    assert [i["name"] for i in guided["inputs"]] == [
        "sample",
        "timestep",
        "encoder_hidden_states",
        "control",
        "controlnet_scale",
    ]
    assert guided["inputs"][:3] == unet["inputs"] and guided["outputs"] == unet["outputs"]
    assert guided["inputs"][3] == {
        "name": "control",
        "dtype": "float32",
        "shape": ["videos", "frames", 3, "height", "width"],
    }
    assert guided["inputs"][4] == {"name": "controlnet_scale", "dtype": "float32", "shape": []}
    assert guided["axis_ranges"] == {**unet["axis_ranges"], "height": [24, 8192], "width": [24, 8192]}
    controlnet = guided["config"]["controlnet"]  # an object, not its string
    assert controlnet["cross_attention_dim"] == guided["config"]["cross_attention_dim"] == 32
    assert EngineDir.load(guided_engines).networks == (*PLAIN, "unet_controlnet")


def test_check_compares_the_guided_graph_with_torch(guided_engines, cli):
    result = cli("check", str(guided_engines))
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("onnxruntime ")]
    guided = [line for line in rows if line.split()[1] == "unet_controlnet"]
    assert len(guided) == 2 and all(line.endswith("pass") for line in rows)
    assert {line.split()[1] for line in rows} == {*PLAIN, "unet_controlnet"}


def test_a_plain_export_refuses_guided_video_saying_how(plain_engines, guided_engines, cli, tmp_path):
    assert EngineDir.load(plain_engines).networks == PLAIN
    how = r"exported without a ControlNet, so it cannot run guided video: .*t2v-fast export tiny-random --controlnet"
    pipeline = load_pipeline(str(plain_engines), backend="onnxruntime")
    assert not isinstance(pipeline, GuidedPipeline)
    with pytest.raises(UserError, match=how):  # the pipeline asks its engine folder, which says how
        pipeline.generate_video("a robot", control=CONTROL, **REQUEST)
    for backend in ("onnxruntime", "torch"):
        with pytest.raises(UserError, match=how):
            load_pipeline(str(plain_engines), backend=backend, controlnet=CONTROLNET, device="cpu")
    with pytest.raises(UserError, match=how):  # the backend's own refusal, whoever calls it
        pipeline.backend.predict_noise_guided(*(torch.zeros(()),) * 5)
    # The command line says it before reading the control video.
    result = cli(
        "generate", "a robot", "--model", str(plain_engines), "--backend", "onnxruntime",
        "--control", str(tmp_path / "clip.mp4"), "--out", str(tmp_path / "video.mp4"), "--quiet",
    )  # fmt: skip
    assert result.returncode == 2 and "t2v-fast export tiny-random --controlnet" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    # An export with a ControlNet runs that one only.
    with pytest.raises(UserError, match=r"exported with ControlNet 'tiny-random-controlnet', not 'other'"):
        load_pipeline(str(guided_engines), backend="onnxruntime", controlnet="other")


def test_guided_graph_profiles_are_the_unets_with_the_control_maps(guided_engines):
    engine_dir = EngineDir.load(guided_engines)
    for static in (True, False):
        profiles = default_ranges(engine_dir, static=static).profiles(engine_dir.card)
        assert [p["sample"] for p in profiles["unet_controlnet"]] == [p["sample"] for p in profiles["unet"]]
        for profile in profiles["unet_controlnet"]:
            assert [[*s[:2], 3, 8 * s[3], 8 * s[4]] for s in profile["sample"]] == profile["control"]
            assert profile["controlnet_scale"] == [[], [], []]
    options = provider_options(engine_dir, "unet_controlnet", "TensorrtExecutionProvider", 0)
    assert options["trt_profile_max_shapes"] == "sample:8x24x4x8x8,encoder_hidden_states:8x77x32,control:8x24x3x64x64"


def test_tensorrt_builds_an_engine_for_the_guided_graph(guided_engines, tmp_path, monkeypatch):
    """`t2v-fast build` over an export with a ControlNet, through stand-ins for Polygraphy's documented entry points
    (TensorRT cannot be installed here): four engines recorded, the guided one's profile with the control maps."""
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
    shutil.copytree(guided_engines, folder)
    engine_dir = EngineDir.load(folder)
    tensorrt_build.build_engines(engine_dir, default_ranges(engine_dir, static=False), progress=False)
    recorded = EngineDir.load(folder).engines().values()
    assert sorted(record.component for record in recorded) == sorted((*PLAIN, "unet_controlnet"))
    unet = {"sample": [8, 24, 4, 8, 8], "timestep": [], "encoder_hidden_states": [8, 77, 32]}  # max shapes
    assert built["unet"] == unet
    assert built["unet_controlnet"] == {**unet, "control": [8, 24, 3, 64, 64], "controlnet_scale": []}
