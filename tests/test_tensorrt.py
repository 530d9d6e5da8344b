"""TensorRT: engine selection, stale-engine refusal and profile checks run everywhere; build/load/run need a GPU.

The GPU tests skip, saying why, where `tensorrt` or CUDA is missing (as in CI, which has neither).
"""

import hashlib
import importlib.util
import json
import multiprocessing
import shutil

import numpy as np
import pytest
import torch
from conftest import max_pixel_diff, run_cli

from export.tensorrt_build import timing_cache_path
from t2v_fast.backends.tensorrt import engine_key, load_plan, select_engine
from t2v_fast.core.engine_dir import EngineDir, EngineRecord
from t2v_fast.core.profiles import AxisRange, BuildRanges, check_in_profiles, default_ranges, profile_index
from t2v_fast.errors import UserError
from t2v_fast.families.text2video_zero.pipeline import TextToVideoZeroPipeline

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
gpu = pytest.mark.skipif(
    not (HAS_TENSORRT and torch.cuda.is_available()),
    reason=f"needs TensorRT and a CUDA GPU (tensorrt installed: {HAS_TENSORRT}, CUDA: {torch.cuda.is_available()})",
)


def _record_engine(engine_dir: EngineDir, component="unet", trt="10.13.0", capability="9.0", **overrides):
    precision, static = overrides.pop("precision", "fp16"), overrides.pop("static", False)
    key = engine_key(component, trt, capability, precision, static) + overrides.pop("suffix", "")
    entry = {
        "component": component,
        "file": f"{key}.plan",
        "tensorrt_version": trt,
        "compute_capability": capability,
        "precision": precision,
        "static": static,
        "onnx_sha256": engine_dir.manifest["components"][component]["sha256"],
        "weights_sha256": engine_dir.weights_sha256,
        "profiles": [],
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
    assert select_engine(engine_dir, "unet", "10.13.0", "9.0", "fp16").file == entry["file"]


def test_engine_of_another_tensorrt_or_gpu_is_refused(engine_dir):
    _record_engine(engine_dir)
    with pytest.raises(UserError, match=r"built for TensorRT 10\.13\.0 on sm_9\.0, not TensorRT 10\.14\.0 .*rebuild"):
        select_engine(engine_dir, "unet", "10.14.0", "9.0", "fp16")
    with pytest.raises(UserError, match=r"not TensorRT 10\.13\.0 on sm_8\.0; rebuild"):
        select_engine(engine_dir, "unet", "10.13.0", "8.0", "fp16")


def test_engines_are_selected_by_precision(engine_dir):
    fp32 = _record_engine(engine_dir, precision="fp32", built_at=2.0)
    fp16 = _record_engine(engine_dir, precision="fp16", built_at=1.0)
    assert select_engine(engine_dir, "unet", "10.13.0", "9.0", "fp16").file == fp16["file"]
    assert select_engine(engine_dir, "unet", "10.13.0", "9.0", "fp32").file == fp32["file"]
    engine_dir.manifest["engines"] = {
        k: v for k, v in engine_dir.manifest["engines"].items() if v["precision"] == "fp32"
    }
    with pytest.raises(UserError, match=r"no fp16 TensorRT engine for unet .*\(built: fp32\)"):
        select_engine(engine_dir, "unet", "10.13.0", "9.0", "fp16")


@pytest.mark.parametrize("field", ["onnx_sha256", "weights_sha256"])
def test_stale_engine_is_refused(engine_dir, field):
    _record_engine(engine_dir, **{field: "f" * 64})
    with pytest.raises(UserError, match=r"built from another export .*rebuild with: t2v-fast build"):
        select_engine(engine_dir, "unet", "10.13.0", "9.0", "fp16")


def test_a_stale_engine_recorded_first_does_not_hide_a_fresh_one(engine_dir):
    _record_engine(engine_dir, onnx_sha256="f" * 64, suffix=".old", built_at=1.0)
    fresh = _record_engine(engine_dir, built_at=2.0)
    assert next(iter(engine_dir.manifest["engines"].values()))["onnx_sha256"] == "f" * 64
    assert select_engine(engine_dir, "unet", "10.13.0", "9.0", "fp16").file == fresh["file"]


def test_newest_fresh_engine_wins(engine_dir):
    _record_engine(engine_dir, static=True, built_at=5.0)
    dynamic = _record_engine(engine_dir, static=False, built_at=9.0)
    assert select_engine(engine_dir, "unet", "10.13.0", "9.0", "fp16").file == dynamic["file"]


def test_missing_engine_says_to_build(engine_dir):
    with pytest.raises(UserError, match=r"no TensorRT engine for vae_decoder .*t2v-fast build"):
        select_engine(engine_dir, "vae_decoder", "10.13.0", "9.0", "fp16")


def test_engine_file_is_checked_against_its_record(engine_dir):
    plan = engine_dir.path / "unet.plan"
    plan.write_bytes(b"serialized engine")
    record = EngineRecord(
        "unet", "unet.plan", "10.13.0", "9.0", "", "", sha256=hashlib.sha256(b"serialized engine").hexdigest(), bytes=17
    )
    assert load_plan(engine_dir, record) == b"serialized engine"
    plan.write_bytes(b"serialized engin")
    with pytest.raises(UserError, match=r"does not match engine\.json .*rebuild"):
        load_plan(engine_dir, record)


def test_timing_cache_is_per_tensorrt_version_and_gpu(engine_dir):
    paths = {timing_cache_path(engine_dir, v, c) for v in ("10.13.0", "11.0.0") for c in ("8.9", "9.0")}
    assert len(paths) == 4 and all(p.parent == engine_dir.path for p in paths)


def _record_concurrently(folder: str, prefix: str) -> None:
    engine_dir = EngineDir.load(folder, verify_hashes=False)
    for k in range(15):
        engine_dir.record_engine(f"{prefix}-{k}", EngineRecord("unet", f"{prefix}-{k}.plan", "10", "9.0", "", ""))


def test_concurrent_builds_into_one_folder_keep_every_entry(engine_dir):
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_record_concurrently, args=(str(engine_dir.path), p)) for p in ("a", "b", "c")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    recorded = json.loads((engine_dir.path / "engine.json").read_text())["engines"]
    assert sorted(recorded) == sorted(f"{p}-{k}" for p in "abc" for k in range(15))


def test_profiles_follow_the_ranges(engine_dir):
    ranges = BuildRanges(
        AxisRange(1, 1, 2), AxisRange(2, 8, 24), AxisRange.parse("64", "height"), AxisRange(64, 64, 128)
    )
    profiles = ranges.profiles(engine_dir.card)
    # One ranged UNet profile from 1 video without guidance and the first frame alone, to 2 × 2 videos × 24 frames.
    assert [p["sample"] for p in profiles["unet"]] == [[[1, 1, 4, 8, 8], [2, 8, 4, 8, 8], [4, 24, 4, 8, 16]]]
    assert profiles["unet"][0]["encoder_hidden_states"] == [[1, 77, 32], [2, 77, 32], [4, 77, 32]]
    assert profiles["text_encoder"] == [{"input_ids": [[1, 77], [2, 77], [4, 77]]}]
    assert profiles["vae_decoder"] == [{"latents": [[1, 4, 8, 8], [8, 4, 8, 8], [8, 4, 8, 16]]}]
    with pytest.raises(UserError, match="multiples of 8"):
        BuildRanges(AxisRange(1, 1, 1), AxisRange(8, 8, 8), AxisRange(76, 76, 76), AxisRange(64, 64, 64)).profiles(
            engine_dir.card
        )


def test_static_ranges_give_one_fixed_unet_profile_per_shape(engine_dir):
    profiles = default_ranges(engine_dir, static=True).profiles(engine_dir.card)
    samples = [p["sample"] for p in profiles["unet"]]
    assert [s[0] for s in samples] == [[1, 1, 4, 8, 8], [1, 8, 4, 8, 8], [2, 1, 4, 8, 8], [2, 8, 4, 8, 8]]
    assert all(s[0] == s[1] == s[2] for s in samples), "fixed shapes: each can replay a CUDA graph"


def test_shape_outside_profiles_names_the_ranges():
    profiles = [{"sample": [[2, 2, 4, 8, 8], [2, 8, 4, 8, 8], [4, 24, 4, 8, 16]]}]
    assert check_in_profiles("unet", {"sample": (2, 24, 4, 8, 16)}, profiles) == 0
    with pytest.raises(UserError, match=r"sample \[2, 25, 4, 8, 8\] are outside the engine's profiles \(sample \[2, 2"):
        check_in_profiles("unet", {"sample": (2, 25, 4, 8, 8)}, profiles)


class ShapeRecorder:
    """A backend that records the input shapes of every call the pipeline makes, then runs the torch backend."""

    def __init__(self, backend):
        self.backend, self.calls = backend, []
        self.name, self.card, self.device, self.dtype = "recorder", backend.card, backend.device, backend.dtype
        self.placement = backend.placement

    def encode_text(self, input_ids):
        self.calls.append(("text_encoder", {"input_ids": tuple(input_ids.shape)}))
        return self.backend.encode_text(input_ids)

    def predict_noise(self, sample, timestep, encoder_hidden_states):
        shapes = {"sample": tuple(sample.shape), "encoder_hidden_states": tuple(encoder_hidden_states.shape)}
        self.calls.append(("unet", shapes))
        return self.backend.predict_noise(sample, timestep, encoder_hidden_states)

    def decode_latents(self, latents):
        self.calls.append(("vae_decoder", {"latents": tuple(latents.shape)}))
        return self.backend.decode_latents(latents)


GENERATIONS = {
    "8 frames, guidance": (dict(prompt="a cat", frames=8), True),
    "8 frames, guidance off": (dict(prompt="a cat", frames=8, guidance=1.0), True),
    "prompt equal to its negative": (dict(prompt="a cat", negative_prompt="a cat", frames=8), True),
    "24 frames chunked by 8": (dict(prompt="a cat", frames=24, chunk_size=8), True),
    "5 frames": (dict(prompt="a dog", frames=5), False),
    "repeated prompts, 2 videos each": (dict(prompt=["a", "a", "b"], videos_per_prompt=2, frames=3), False),
    "2 prompts, guidance off": (dict(prompt=["x", "y"], frames=12, guidance=0.5), False),
}


@pytest.mark.parametrize(("request_", "static_too"), GENERATIONS.values(), ids=GENERATIONS.keys())
def test_every_shape_a_generation_sends_is_inside_the_built_profiles(engine_dir, pipeline, request_, static_too):
    """Replays the exact calls of real generations through the profiles `t2v-fast build` would build for them."""
    recorder = ShapeRecorder(pipeline.backend)
    recording = TextToVideoZeroPipeline(pipeline.tokenizer, pipeline.scheduler, recorder)
    request = dict(request_)
    recording.generate(request.pop("prompt"), steps=3, progress=False, **request)
    assert {component for component, _ in recorder.calls} == {"text_encoder", "unet", "vae_decoder"}
    videos = (
        len(request_["prompt"]) * request.get("videos_per_prompt", 1) if isinstance(request_["prompt"], list) else 1
    )
    frames = request.get("chunk_size") or request["frames"]
    given = {"videos": AxisRange(1, videos, max(videos, 4)), "frames": AxisRange(1, frames, max(frames, 24))}
    builds = {"dynamic": default_ranges(engine_dir, static=False, given=given)}
    if static_too:  # the export's own shapes: 1 video of 8 frames at 64×64
        builds["static"] = default_ranges(engine_dir, static=True)
    for kind, ranges in builds.items():
        profiles = ranges.profiles(engine_dir.card)
        outside = [call for call in recorder.calls if profile_index(profiles[call[0]], call[1]) is None]
        assert not outside, f"{kind} build: calls outside every profile: {outside[:3]}"


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_build_without_tensorrt_names_the_extra(tiny_engines):
    result = run_cli("build", str(tiny_engines))
    assert result.returncode == 2
    assert "pip install 't2v-fast[tensorrt]'" in result.stderr and "Traceback" not in result.stderr


@gpu
@pytest.mark.parametrize("static", [True, False], ids=["static", "dynamic"])
def test_fp16_engines_generate_like_the_torch_backend(tmp_path, static):
    """fp16 export, strongly typed fp16 engines, a whole generation (first frame alone, guidance, all frames)."""
    from t2v_fast import load_pipeline

    folder = tmp_path / "engines"
    assert run_cli("export", "tiny-random", "--out", str(folder), "--dtype", "fp16", "--quiet").returncode == 0
    build = run_cli("build", str(folder), *(["--static"] if static else []))
    assert build.returncode == 0, build.stderr
    manifest = json.loads((folder / "engine.json").read_text())
    engines = list(manifest["engines"].values())
    assert {e["component"] for e in engines} == {"text_encoder", "unet", "vae_decoder"}
    assert all(e["precision"] == "fp16" and e["static"] == static for e in engines)

    check = run_cli("check", str(folder))
    assert check.returncode == 0 and any(line.startswith("tensorrt") for line in check.stdout.splitlines())

    settings = dict(frames=8, height=64, width=64, steps=6, seed=2, progress=False)
    ours = load_pipeline(str(folder), backend="tensorrt").generate_video("a cat", **settings)
    # The same precision on the same GPU: the torch backend in float16 is what the engines must reproduce.
    reference = load_pipeline("tiny-random", device="cuda", dtype="float16").generate_video("a cat", **settings)
    assert max_pixel_diff(ours.frames, reference.frames) <= 2 and np.asarray(ours.frames).std() > 10


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
    ours = load_pipeline(str(folder), backend="tensorrt").generate_video("a cat", **settings)
    reference = load_pipeline("tiny-random", device="cpu").generate_video("a cat", **settings)
    assert max_pixel_diff(ours.frames, reference.frames) <= 2 and np.asarray(ours.frames).std() > 10

    for entry in manifest["engines"].values():
        entry["onnx_sha256"] = "0" * 64
    (folder / "engine.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="rebuild"):
        load_pipeline(str(folder), backend="tensorrt")


def test_static_modelscope_profiles_have_no_first_frame_profile():
    """ModelScope never sends 1 frame: a static build has one profile per guidance setting, all frames each."""
    from t2v_fast.core.models import ModelCard, load_components

    info = ModelCard.from_components(load_components("modelscope-tiny-random", device="cpu", dtype="float32"))
    fixed = {axis: AxisRange(v, v, v) for axis, v in (("videos", 1), ("frames", 16), ("height", 64), ("width", 64))}
    unet = BuildRanges(**fixed).profiles(info)["unet"]
    assert [profile["sample"][0] for profile in unet] == [[1, 16, 4, 8, 8], [2, 16, 4, 8, 8]]


class StaticUNetBackend(ShapeRecorder):
    """The recorder with the TensorRT backend's check of a generation's shapes against static profiles."""

    def __init__(self, backend, profiles):
        super().__init__(backend)
        self.engines = {"unet": type("Engine", (), {"profiles": profiles})()}

    def check_unet_shapes(self, calls):
        from t2v_fast.backends.tensorrt import TensorRTBackend

        TensorRTBackend.check_unet_shapes(self, calls)


def test_a_generation_outside_static_profiles_is_refused_before_any_unet_call(engine_dir, pipeline):
    profiles = default_ranges(engine_dir, static=True).profiles(engine_dir.card)["unet"]
    backend = StaticUNetBackend(pipeline.backend, profiles)
    recording = TextToVideoZeroPipeline(pipeline.tokenizer, pipeline.scheduler, backend)
    with pytest.raises(UserError, match="outside the engine's profiles"):
        recording.generate("a cat", frames=5, steps=3, progress=False)
    assert [call for call in backend.calls if call[0] == "unet"] == []
    recording.generate("a cat", frames=24, chunk_size=8, steps=3, progress=False)  # equal chunks: all served
    assert {call[1]["sample"][1] for call in backend.calls if call[0] == "unet"} == {1, 8}
