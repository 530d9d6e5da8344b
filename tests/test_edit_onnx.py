"""Video editing on ONNX Runtime: `t2v-fast export` of an Instruct-Pix2Pix model writes `vae_encoder` beside the
text encoder, the 8-channel UNet and the VAE decoder; ONNX Runtime edits a video as the torch backend does (2/255 per
pixel, at a frame count and size the export never saw), and `t2v-fast check` holds the encoder to torch.

TensorRT builds its engines from the same graphs with the profiles checked here (three-way guidance's UNet batch, the
encoder's images, the edit's shorter last chunk); building and running them needs TensorRT and a GPU, and is not.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import max_pixel_diff, run_cli

from benchmarks.guided import moving_shape
from t2v_fast import load_pipeline
from t2v_fast.backends.onnxruntime import provider_options
from t2v_fast.core.engine_dir import EngineDir
from t2v_fast.core.profiles import AxisRange, default_ranges, profile_index
from t2v_fast.families.instruct_pix2pix.pipeline import InstructPix2PixPipeline

MODEL = "pix2pix-tiny-random"
TOLERANCE = 2  # /255 per pixel
NETWORKS = ("text_encoder", "unet", "vae_encoder", "vae_decoder")
# 3 frames at 40×56 (5×7 latents): neither the export's 8 frames nor its 64×64.
REQUEST = dict(seed=1, steps=3, height=40, width=56, image_guidance=1.5, progress=False)
VIDEO = moving_shape(3, 40, 56)


@pytest.fixture(scope="module")
def edit_engines(tmp_path_factory) -> Path:
    """`pix2pix-tiny-random` exported once through the command line at its default example shape: the family sets
    no frame count (an edit's is its input video's), so the export's is its chunk size, 8 frames, at 64×64."""
    folder = tmp_path_factory.mktemp("edit") / "engines"
    run_cli("export", MODEL, "--out", str(folder), "--quiet", check=True)
    return folder


def recorded_calls(pipeline: InstructPix2PixPipeline, monkeypatch) -> list[tuple[str, dict[str, tuple[int, ...]]]]:
    """Every network call the ONNX Runtime backend makes from now on, with its input shapes (filled in as it runs)."""
    backend, calls = pipeline.backend, []
    run = backend._run

    def recording(component, **inputs):
        calls.append((component, {name: tuple(tensor.shape) for name, tensor in inputs.items()}))
        return run(component, **inputs)

    monkeypatch.setattr(backend, "_run", recording)
    return calls


def test_onnxruntime_edit_equals_torch(edit_engines, monkeypatch):
    ours = load_pipeline(str(edit_engines), backend="onnxruntime")
    reference = load_pipeline(MODEL)
    assert isinstance(ours, InstructPix2PixPipeline) and isinstance(reference, InstructPix2PixPipeline)
    calls = recorded_calls(ours, monkeypatch)
    video = ours.generate_video("make it winter", video=VIDEO, **REQUEST)
    expected = reference.generate_video("make it winter", video=VIDEO, **REQUEST)
    assert video.frames.shape == (3, 40, 56, 3)
    assert video.frames.std() > 10, "frames are almost constant"
    assert max_pixel_diff(video.frames, expected.frames) <= TOLERANCE
    # Every network ran on ONNX Runtime: the input frames through the encoder, three-way guidance's UNet batch of 3
    # with the input frames' latents beside the noise (8 channels).
    assert {component for component, _ in calls} == set(NETWORKS)
    assert [shapes["images"] for component, shapes in calls if component == "vae_encoder"] == [(3, 3, 40, 56)]
    assert {shapes["sample"] for component, shapes in calls if component == "unet"} == {(3, 3, 8, 5, 7)}
    # The comparison is not trivial: the graphs read the input video (a stronger image guidance is another video).
    closer = ours.generate_video("make it winter", video=VIDEO, **{**REQUEST, "image_guidance": 3.0})
    assert max_pixel_diff(closer.frames, video.frames) > 10
    assert video.metadata["model"]["task"] == "edit"


def test_check_holds_the_vae_encoder_to_torch(edit_engines, cli):
    assert EngineDir.load(edit_engines).networks == NETWORKS
    result = cli("check", str(edit_engines))
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("onnxruntime")]
    # Three-way guidance's text and UNet batch of 3; no first frame alone (video editing never sends one).
    assert [(row[1], row[2]) for row in rows] == [
        ("text_encoder", "batch=3"),
        ("text_encoder", "batch=1"),
        ("unet", "frames=8,batch=3"),
        ("unet", "frames=8,batch=1"),
        ("vae_decoder", "images=8"),
        ("vae_decoder", "images=1"),
        ("vae_encoder", "images=8"),
        ("vae_encoder", "images=1"),
    ]
    assert all(row[-1] == "pass" for row in rows)


def test_tensorrt_profiles_cover_three_way_guidance_and_the_encoder(edit_engines):
    engine_dir = EngineDir.load(edit_engines)
    assert engine_dir.export_settings.frames == 8  # the chunk size: the family sets no frame count
    static = default_ranges(engine_dir, static=True).profiles(engine_dir.card)
    # Guidance off and on (×3), all 8 frames of the one chunk an 8-frame video makes; no first frame alone.
    assert [p["sample"][0] for p in static["unet"]] == [[1, 8, 8, 8, 8], [3, 8, 8, 8, 8]]
    assert static["text_encoder"] == [{"input_ids": [[1, 77], [3, 77], [3, 77]]}]
    dynamic = default_ranges(engine_dir, static=False).profiles(engine_dir.card)
    assert dynamic["unet"][0]["sample"] == [[1, 1, 8, 8, 8], [3, 8, 8, 8, 8], [12, 24, 8, 8, 8]]  # 4 videos × 3
    assert dynamic["text_encoder"][0]["input_ids"][2] == [12, 77]
    for profiles in (static, dynamic):  # 1 to a decode batch of input frames, at the export's size
        assert profiles["vae_encoder"] == [{"images": [[1, 3, 64, 64], [8, 3, 64, 64], [8, 3, 64, 64]]}]
    options = provider_options(engine_dir, "vae_encoder", "TensorrtExecutionProvider", 0)
    assert (options["trt_profile_min_shapes"], options["trt_profile_max_shapes"]) == (
        "images:1x3x64x64",
        "images:8x3x64x64",
    )


def test_static_profiles_serve_an_edits_shorter_last_chunk(edit_engines, monkeypatch):
    """A static build for 10-frame videos: chunks of 8 and 4 frames at the default chunk size (the last one shorter,
    as the reference runs it), each a fixed-shape profile that every call of a real 10-frame edit falls in."""
    engine_dir = EngineDir.load(edit_engines)
    ranges = default_ranges(engine_dir, static=True, given={"frames": AxisRange(10, 10, 10)})
    profiles = ranges.profiles(engine_dir.card)
    assert sorted(p["sample"][0][:2] for p in profiles["unet"]) == [[1, 4], [1, 8], [3, 4], [3, 8]]
    pipeline = load_pipeline(str(edit_engines), backend="onnxruntime")
    calls = recorded_calls(pipeline, monkeypatch)
    pipeline.generate_video("make it winter", video=moving_shape(10, 64, 64), seed=0, steps=2, progress=False)
    assert {shapes["sample"][1] for component, shapes in calls if component == "unet"} == {4, 8}
    outside = [call for call in calls if profile_index(profiles[call[0]], call[1]) is None]
    assert not outside, f"calls outside every profile: {outside[:3]}"
