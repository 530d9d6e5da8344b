"""The ModelScope text-to-video family (UNet3D) against diffusers' TextToVideoSDPipeline, on torch and ONNX Runtime.

`modelscope-tiny-random` is saved to a folder once through our CLI; diffusers loads that folder as the oracle.
Tolerance: 2/255 per pixel between videos (the observed difference is 0-1/255, rounding), 1e-4 between networks.
"""

import json

import numpy as np
import pytest
import torch
from conftest import max_pixel_diff, run_cli
from test_video_output import read_mp4

from t2v_fast import ModelScopePipeline, TextToVideoZeroPipeline, load_pipeline
from t2v_fast.backends.torch import TorchBackend
from t2v_fast.core.models import load_components
from t2v_fast.errors import UserError
from t2v_fast.families.modelscope.unet3d import VideoUNet3D

TOLERANCE = 2
PROMPT, NEGATIVE = "a panda playing guitar on times square", "blurry, low quality"


@pytest.fixture(scope="module")
def ms_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "modelscope-tiny"
    result = run_cli("model", "save", "modelscope-tiny-random", str(folder), check=True)
    assert "ModelScope text-to-video" in result.stdout and "unet" in result.stdout
    return folder


@pytest.fixture(scope="module")
def ms_pipeline(ms_folder):
    return load_pipeline(str(ms_folder), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def ms_reference(ms_folder):
    """diffusers' TextToVideoSDPipeline, the oracle; never used by t2v-fast at run time."""
    from diffusers import TextToVideoSDPipeline

    reference = TextToVideoSDPipeline.from_pretrained(str(ms_folder))
    reference.set_progress_bar_config(disable=True)
    return reference


def reference_video(reference, seed: int, **kwargs) -> np.ndarray:
    frames = reference(generator=torch.Generator().manual_seed(seed), output_type="np", **kwargs).frames[0]
    return (np.clip(frames, 0, 1) * 255).round().astype(np.uint8)


def assert_has_content(frames: np.ndarray) -> None:
    """Guard against comparisons that pass trivially: frames have content and change over time."""
    assert frames.std() > 10, "frames are almost constant"
    assert np.abs(np.diff(frames.astype(np.int16), axis=0)).mean() > 1, "frames do not change over time"


def test_a_saved_folder_is_a_diffusers_text_to_video_folder(ms_folder, ms_pipeline):
    index = json.loads((ms_folder / "model_index.json").read_text())
    assert index["_class_name"] == "TextToVideoSDPipeline" and index["unet"] == ["diffusers", "UNet3DConditionModel"]
    assert "safety_checker" not in index
    assert isinstance(ms_pipeline, ModelScopePipeline)
    assert isinstance(load_pipeline("tiny-random"), TextToVideoZeroPipeline)  # SD 1.x stays Text2Video-Zero


CASES = {  # two frame counts × two resolutions, the second non-square with odd latent sides (7×11)
    "9 frames 64x64": dict(frames=9, height=64, width=64, steps=6, guidance=9.0, seed=0),
    "4 frames 64x64": dict(frames=4, height=64, width=64, steps=6, guidance=7.0, seed=1),
    "9 frames 56x88": dict(frames=9, height=56, width=88, steps=5, guidance=9.0, seed=2),
    "4 frames 56x88": dict(frames=4, height=56, width=88, steps=5, guidance=1.0, seed=3),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_frames_match_reference(ms_pipeline, ms_reference, case):
    ours = ms_pipeline.generate_video(PROMPT, negative_prompt=NEGATIVE, progress=False, **case)
    ref = reference_video(
        ms_reference,
        case["seed"],
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        num_frames=case["frames"],
        num_inference_steps=case["steps"],
        guidance_scale=case["guidance"],
        height=case["height"],
        width=case["width"],
    )
    assert ours.frames.shape == (case["frames"], case["height"], case["width"], 3)
    assert_has_content(ours.frames)
    assert max_pixel_diff(ours.frames, ref) <= TOLERANCE


def test_defaults_are_the_references(ms_pipeline, ms_reference):
    """No parameters but steps: 16 frames at the native 64×64, guidance 9.0, as the reference; 8 fps in the sidecar."""
    ours = ms_pipeline.generate_video("a cat", seed=5, steps=3, progress=False)
    params = ours.metadata["params"]
    assert (params["frames"], params["guidance"], params["fps"], params["height"]) == (16, 9.0, 8.0, 64)
    assert not {"motion_x", "motion_y", "t0", "t1", "chunk_size"} & set(params)  # Text2Video-Zero's own
    assert ours.metadata["model"]["family"] == "modelscope"
    ref = reference_video(ms_reference, 5, prompt="a cat", num_inference_steps=3)
    assert max_pixel_diff(ours.frames, ref) <= TOLERANCE


def test_a_batch_equals_its_videos_made_one_by_one(ms_pipeline):
    prompts = ["a red kite over the sea", "a dog running in the snow"]
    options = dict(negative_prompt=NEGATIVE, frames=3, steps=4, progress=False)
    batch = ms_pipeline.generate(prompts, seed=40, videos_per_prompt=2, **options)
    assert len(batch) == 4 and {v.metadata["timings"]["videos_in_batch"] for v in batch} == {4}
    for k, video in enumerate(batch):
        alone = ms_pipeline.generate_video(prompts[k // 2], seed=40 + k, **options)
        assert video.metadata["seed"] == 40 + k
        assert max_pixel_diff(video.frames, alone.frames) <= TOLERANCE
    assert max_pixel_diff(batch[0].frames, batch[1].frames) > 20  # different seeds, different videos


@pytest.mark.parametrize(
    ("option", "value", "owners"),
    [
        ("motion_x", 3.0, "Text2Video-Zero"),
        ("motion_y", 0.0, "Text2Video-Zero"),
        ("t0", 40, "Text2Video-Zero"),
        ("t1", 45, "Text2Video-Zero"),
        ("chunk_size", 4, "Text2Video-Zero, Instruct-Pix2Pix and guided video"),  # every chunked loop's
    ],
)
def test_text2video_zero_parameters_are_refused(ms_pipeline, option, value, owners):
    with pytest.raises(UserError, match=f"{option} is a {owners} parameter; ModelScope"):
        ms_pipeline.generate_video("a cat", seed=1, frames=2, steps=2, progress=False, **{option: value})


def test_command_line_refuses_them_too(tmp_path):
    out = tmp_path / "cat.mp4"
    result = run_cli("generate", "a cat", "--model", "modelscope-tiny-random", "--out", str(out), "--motion-x", "4")
    assert result.returncode == 2 and "motion_x is a Text2Video-Zero parameter" in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()


def test_command_line_generates_with_the_family_defaults(tmp_path):
    out = tmp_path / "cat.mp4"
    result = run_cli(
        "generate", "a cat", "--model", "modelscope-tiny-random", "--out", str(out), "--steps", "3", "--seed", "2"
    )
    assert result.returncode == 0, result.stderr
    meta, frames = read_mp4(out)
    assert frames.shape == (16, 64, 64, 3) and meta["fps"] == pytest.approx(8.0)
    assert json.loads(out.with_suffix(".json").read_text())["model"]["family"] == "modelscope"


def test_a_manifest_renders_and_rejects_by_row_and_column(tmp_path):
    manifest = tmp_path / "night.csv"
    manifest.write_text(
        "id,prompt,seed,frames,motion_x,t0\n"
        "cat,a cat on a sofa,1,3,,\n"
        "moving,a kite,2,3,5,\n"
        "dog,a dog in the snow,3,,,\n"
        "late,a bird,4,3,,40\n"
    )
    out = tmp_path / "out"
    result = run_cli("batch", str(manifest), "--model", "modelscope-tiny-random", "--out", str(out), "--steps", "3")
    assert result.returncode == 0, result.stderr
    rejected = {row["row"]: row for row in _csv(out / "rejected.csv")}
    assert set(rejected) == {"3", "5"}
    assert rejected["3"]["column"] == "motion_x" and "Text2Video-Zero parameter" in rejected["3"]["problem"]
    assert rejected["5"]["column"] == "t0"
    assert read_mp4(out / "cat.mp4")[1].shape == (3, 64, 64, 3)
    assert read_mp4(out / "dog.mp4")[1].shape == (16, 64, 64, 3)  # the family's default frame count
    assert not (out / "moving.mp4").exists() and not (out / "late.mp4").exists()


def _csv(path):
    import csv

    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_feed_forward_chunking_changes_memory_not_results():
    components = load_components("modelscope-tiny-random", device="cpu", dtype="float32")
    sample = torch.randn(2, 5, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    text = torch.randn(2, 77, 32, generator=torch.Generator().manual_seed(1))
    timestep = torch.tensor(500)
    whole = TorchBackend(components, feed_forward_chunk=None).predict_noise(sample, timestep, text)
    chunked = TorchBackend(components, feed_forward_chunk=7).predict_noise(sample, timestep, text)
    assert torch.allclose(whole, chunked, atol=1e-5)


@pytest.mark.parametrize(("videos", "frames", "height", "width"), [(2, 3, 8, 10), (1, 1, 7, 9), (3, 6, 6, 12)])
def test_video_unet3d_is_diffusers_forward(videos, frames, height, width):
    """Our exportable forward equals `UNet3DConditionModel.forward` in its own layout, odd latent sides included."""
    unet = load_components("modelscope-tiny-random", device="cpu", dtype="float32").unet
    sample = torch.randn(videos, frames, 4, height, width, generator=torch.Generator().manual_seed(frames))
    text = torch.randn(videos, 77, 32, generator=torch.Generator().manual_seed(videos))
    timestep = torch.tensor(321)
    with torch.no_grad():
        ours = VideoUNet3D(unet)(sample, timestep, text)
        theirs = unet(sample.transpose(1, 2), timestep, encoder_hidden_states=text, return_dict=False)[0]
    assert torch.allclose(ours, theirs.transpose(1, 2), atol=1e-5)


@pytest.fixture(scope="module")
def ms_engines(tmp_path_factory):
    """`modelscope-tiny-random` exported through the CLI with the family's example shapes (1 video, 16 frames, 64²)."""
    out = tmp_path_factory.mktemp("engines") / "modelscope-tiny"
    run_cli("export", "modelscope-tiny-random", "--out", str(out), "--quiet", check=True)
    return out


def test_the_export_records_the_family_and_its_frames(ms_engines):
    manifest = json.loads((ms_engines / "engine.json").read_text())
    assert manifest["model_info"]["family"] == "modelscope" and manifest["export"]["frames"] == 16
    unet_inputs = {i["name"]: i["shape"] for i in manifest["components"]["unet"]["inputs"]}
    assert unet_inputs["sample"] == ["videos", "frames", 4, "latent_height", "latent_width"]


def test_fast_mode_on_an_export_without_its_graphs_is_refused_in_one_line(ms_engines, cli, tmp_path):
    """This export has no `--fast` (the session's `tiny_engines` has): fast mode needs its graphs."""
    manifest = json.loads((ms_engines / "engine.json").read_text())
    assert manifest["export"]["fast"] is False
    assert set(manifest["components"]) == {"text_encoder", "unet", "vae_decoder"}
    pipeline = load_pipeline(str(ms_engines), backend="onnxruntime")
    with pytest.raises(UserError, match=r"exported without fast mode's graphs; export again with --fast"):
        pipeline.generate_video("a cat", cache_interval=2, frames=2, steps=3, progress=False)
    out = tmp_path / "x.mp4"
    args = ["--model", str(ms_engines), "--out", str(out), "--cache-interval", "3", "--frames", "2", "--quiet"]
    result = cli("generate", "a cat", "--backend", "onnxruntime", *args)
    assert result.returncode == 2 and not out.exists()
    assert result.stderr.strip().splitlines() == [
        f"t2v-fast: error: {ms_engines} was exported without fast mode's graphs; export again with --fast,"
        " or run fast mode on the torch backend"
    ]


@pytest.mark.parametrize(("videos", "frames", "height", "width"), [(2, 5, 8, 8), (1, 1, 7, 11), (4, 20, 6, 10)])
def test_exported_unet3d_matches_pytorch_at_other_shapes(ms_engines, videos, frames, height, width):
    import onnxruntime as ort

    unet = load_components("modelscope-tiny-random", device="cpu", dtype="float32").unet
    sample = torch.randn(videos, frames, 4, height, width, generator=torch.Generator().manual_seed(frames))
    text = torch.randn(videos, 77, 32, generator=torch.Generator().manual_seed(videos))
    timestep = torch.tensor(641)
    with torch.no_grad():
        expected = VideoUNet3D(unet)(sample, timestep, text).numpy()
    session = ort.InferenceSession(str(ms_engines / "unet.onnx"), providers=["CPUExecutionProvider"])
    feeds = {"sample": sample.numpy(), "timestep": timestep.numpy(), "encoder_hidden_states": text.numpy()}
    actual = session.run(None, feeds)[0]
    assert actual.shape == expected.shape and np.abs(actual - expected).max() <= 1e-4


def test_onnxruntime_video_equals_torch_at_another_size_and_frame_count(ms_engines, ms_pipeline):
    onnx_pipeline = load_pipeline(str(ms_engines), backend="onnxruntime")
    assert isinstance(onnx_pipeline, ModelScopePipeline)
    case = dict(negative_prompt=NEGATIVE, seed=9, frames=6, height=48, width=80, steps=5, progress=False)
    ours = onnx_pipeline.generate_video(PROMPT, **case)
    reference = ms_pipeline.generate_video(PROMPT, **case)
    assert ours.frames.shape == (6, 48, 80, 3) and ours.metadata["backend"] == "onnxruntime"
    assert_has_content(ours.frames)
    assert max_pixel_diff(ours.frames, reference.frames) <= TOLERANCE


def test_check_command_passes_on_the_export(ms_engines):
    result = run_cli("check", str(ms_engines))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_tensorrt_default_ranges_admit_every_call_of_a_default_generation(ms_engines, ms_pipeline, static):
    """TensorRT ranges for this family, from its export (16 frames): every shape a default generation sends fits."""
    from test_tensorrt import ShapeRecorder

    from t2v_fast.core.engine_dir import EngineDir
    from t2v_fast.core.profiles import default_ranges, profile_index

    engine_dir = EngineDir.load(ms_engines, verify_hashes=False)
    ranges = default_ranges(engine_dir, static=static)
    assert (ranges.frames.optimum, ranges.frames.maximum) == ((16, 16) if static else (16, 32))
    recorder = ShapeRecorder(ms_pipeline.backend)
    ModelScopePipeline(ms_pipeline.tokenizer, ms_pipeline.scheduler, recorder).generate(
        "a cat", steps=2, progress=False
    )
    assert ("unet", {"sample": (2, 16, 4, 8, 8), "encoder_hidden_states": (2, 77, 32)}) in recorder.calls
    profiles = ranges.profiles(engine_dir.card)
    outside = [call for call in recorder.calls if profile_index(profiles[call[0]], call[1]) is None]
    assert not outside, outside[:3]
