"""ONNX export of tiny-random, proven with real ONNX Runtime sessions against the PyTorch modules (fp32, 1e-4)."""

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import assert_is_moving_video, max_pixel_diff, run_cli

from t2v_fast import load_pipeline
from t2v_fast.attention_plugin import VideoUNet
from t2v_fast.backends.onnxruntime import provider_options
from t2v_fast.core.engine_dir import EngineDir
from t2v_fast.core.models import load_components
from t2v_fast.core.networks import TextEncoder, VaeDecoder
from t2v_fast.errors import UserError

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def torch_components():
    return load_components("tiny-random", device="cpu", dtype="float32")


def _session(engines, name):
    return ort.InferenceSession(str(engines / f"{name}.onnx"), providers=["CPUExecutionProvider"])


def _assert_close(actual: np.ndarray, expected: torch.Tensor) -> None:
    assert actual.shape == tuple(expected.shape)
    assert np.abs(actual - expected.numpy()).max() <= TOLERANCE


@pytest.mark.parametrize(
    ("videos", "frames", "height", "width"),
    [(2, 8, 8, 8), (6, 5, 12, 16), (1, 1, 8, 8), (4, 17, 16, 8)],
    ids=["export shapes", "more videos, other frames and size", "one frame", "17 frames, tall"],
)
def test_unet_matches_pytorch_at_any_shape(tiny_engines, torch_components, videos, frames, height, width):
    torch.manual_seed(videos + frames)
    sample = torch.randn(videos, frames, 4, height, width)
    text = torch.randn(videos, 77, 32)
    timestep = torch.tensor(641)
    with torch.no_grad():
        expected = VideoUNet(torch_components.unet)(sample, timestep, text)
    feeds = {"sample": sample.numpy(), "timestep": timestep.numpy(), "encoder_hidden_states": text.numpy()}
    _assert_close(_session(tiny_engines, "unet").run(None, feeds)[0], expected)


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_text_encoder_matches_pytorch(tiny_engines, torch_components, batch):
    ids = torch.randint(0, 514, (batch, 77), generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        expected = TextEncoder(torch_components.text_encoder)(ids)
    _assert_close(_session(tiny_engines, "text_encoder").run(None, {"input_ids": ids.numpy()})[0], expected)


@pytest.mark.parametrize(("images", "height", "width"), [(8, 8, 8), (3, 12, 16)])
def test_vae_decoder_matches_pytorch(tiny_engines, torch_components, images, height, width):
    latents = torch.randn(images, 4, height, width, generator=torch.Generator().manual_seed(images))
    with torch.no_grad():
        expected = VaeDecoder(torch_components.vae)(latents)
    _assert_close(_session(tiny_engines, "vae_decoder").run(None, {"latents": latents.numpy()})[0], expected)


def test_frames_are_a_graph_dimension_and_attention_is_plain_onnx(tiny_engines):
    graph = onnx.load(str(tiny_engines / "unet.onnx")).graph
    sample = next(i for i in graph.input if i.name == "sample")
    dims = [d.dim_param or d.dim_value for d in sample.type.tensor_type.shape.dim]
    assert dims == ["videos", "frames", 4, "latent_height", "latent_width"]
    ops = [node.op_type for node in graph.node]
    # 8 attention modules in the tiny UNet (self and text attention of 4 transformer blocks): MatMul-Softmax-MatMul.
    assert ops.count("Softmax") == 8
    assert "Attention" not in ops and not any(node.domain not in ("", "ai.onnx") for node in graph.node)


def test_engine_json_describes_the_export(tiny_engines):
    manifest = json.loads((tiny_engines / "engine.json").read_text())
    assert manifest["source"]["model_id"] == "tiny-random"
    assert len(manifest["source"]["weights_sha256"]) == 64
    export = {"frames": 8, "height": None, "width": None, "videos": 1, "dtype": "fp32", "opset": 18}
    assert manifest["export"] == {**export, "optimized_for": None, "fast": True}  # the session's export has --fast
    assert set(manifest["components"]) == {"text_encoder", "unet", "vae_decoder", "unet_caching", "unet_cached"}
    assert {"torch", "onnx", "diffusers", "transformers", "t2v_fast"} <= set(manifest["tool_versions"])
    unet = manifest["components"]["unet"]
    assert [i["name"] for i in unet["inputs"]] == ["sample", "timestep", "encoder_hidden_states"]
    assert unet["inputs"][0]["shape"] == ["videos", "frames", 4, "latent_height", "latent_width"]
    assert unet["outputs"] == [
        {"name": "noise", "dtype": "float32", "shape": ["videos", "frames", 4, "latent_height", "latent_width"]}
    ]
    assert unet["axis_ranges"] == {
        "videos": [1, 1024],
        "frames": [1, 4096],
        "latent_height": [3, 1024],
        "latent_width": [3, 1024],
    }
    assert unet["config"]["block_out_channels"] == [32, 64] and unet["external_data"] is None
    recorded = {entry["file"] for entry in manifest["components"].values()}
    assert recorded == {p.name for p in tiny_engines.glob("*.onnx*")}


def test_onnxruntime_video_equals_torch_video(tiny_engines):
    settings = dict(frames=8, height=64, width=64, steps=10, seed=5, negative_prompt="blurry", progress=False)
    ours = load_pipeline(str(tiny_engines), backend="onnxruntime").generate_video("a cat on a skateboard", **settings)
    reference = load_pipeline("tiny-random", backend="torch").generate_video("a cat on a skateboard", **settings)
    assert ours.metadata["backend"] == "onnxruntime"
    # The device and providers the sessions really run on (CPU-only build here).
    assert (ours.metadata["device"], ours.metadata["providers"]) == ("cpu", ["CPUExecutionProvider"])
    assert "providers" not in reference.metadata
    assert ours.metadata["model"] == reference.metadata["model"]
    assert_is_moving_video(ours.frames)
    assert max_pixel_diff(ours.frames, reference.frames) <= 2


def test_onnxruntime_at_a_size_the_export_never_saw_equals_torch(tiny_engines):
    """Exported at 64×64; 72×88 (9×11 latents, odd: the upsamplers take the skip sizes) runs on the same graph."""
    settings = dict(frames=3, height=72, width=88, steps=6, seed=8, progress=False)
    ours = load_pipeline(str(tiny_engines), backend="onnxruntime").generate_video("a lighthouse", **settings)
    reference = load_pipeline("tiny-random", backend="torch").generate_video("a lighthouse", **settings)
    assert ours.frames.shape == (3, 72, 88, 3)
    assert_is_moving_video(ours.frames)
    assert max_pixel_diff(ours.frames, reference.frames) <= 2


def test_tensorrt_execution_provider_options_cover_the_first_frame_and_cache_in_the_engine_folder(tiny_engines):
    options = provider_options(EngineDir.load(tiny_engines), "unet", "TensorrtExecutionProvider", 0)
    assert options["trt_profile_min_shapes"] == "sample:1x1x4x8x8,encoder_hidden_states:1x77x32"
    assert options["trt_profile_max_shapes"] == "sample:8x24x4x8x8,encoder_hidden_states:8x77x32"
    assert options["trt_engine_cache_enable"] == "True" and options["trt_fp16_enable"] == "False"
    assert Path(options["trt_engine_cache_path"]).parent == tiny_engines
    assert provider_options(EngineDir.load(tiny_engines), "unet", "CPUExecutionProvider", 0) == {}


def test_cuda_graphs_without_the_cuda_provider_are_refused(tiny_engines, tmp_path):
    result = _generate_with_onnxruntime(tiny_engines, tmp_path / "x.mp4", "--cuda-graph")
    assert result.returncode == 2 and "CUDAExecutionProvider" in result.stderr and "Traceback" not in result.stderr


def _generate_with_onnxruntime(engines, out, *options):
    return run_cli(
        "generate", "a cat", "--backend", "onnxruntime", "--model", str(engines), "--out", str(out), *options
    )


def test_cli_generates_with_onnxruntime(tiny_engines, tmp_path):
    out = tmp_path / "ort.mp4"
    result = _generate_with_onnxruntime(tiny_engines, out, "--frames", "3", "--steps", "4", "--seed", "0", "--quiet")
    assert result.returncode == 0, result.stderr
    assert json.loads(out.with_suffix(".json").read_text())["backend"] == "onnxruntime"


@pytest.fixture
def engines_copy(tiny_engines, tmp_path):
    copy = tmp_path / "engines"
    shutil.copytree(tiny_engines, copy)
    return copy


def _edit_manifest(folder, edit):
    manifest = json.loads((folder / "engine.json").read_text())
    edit(manifest)
    (folder / "engine.json").write_text(json.dumps(manifest))


def test_tampered_hash_is_refused(engines_copy):
    _edit_manifest(engines_copy, lambda m: m["components"]["unet"].update(sha256="0" * 64))
    with pytest.raises(UserError, match=r"unet\.onnx does not match the sha256 recorded in .*export again"):
        EngineDir.load(engines_copy)


def test_modified_onnx_file_is_refused(engines_copy):
    with (engines_copy / "vae_decoder.onnx").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(UserError, match=r"vae_decoder\.onnx does not match"):
        load_pipeline(str(engines_copy), backend="onnxruntime")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / "engine.json").write_text("{not json"), r"engine\.json is corrupt"),
        (lambda f: (f / "engine.json").unlink(), r"engine\.json not found"),
        (lambda f: (f / "text_encoder.onnx").unlink(), r"text_encoder\.onnx is missing"),
        (lambda f: _edit_manifest(f, lambda m: m.pop("source")), "missing field 'source'"),
        (lambda f: _edit_manifest(f, lambda m: m["components"].pop("unet")), "missing field 'unet'"),
        (lambda f: _edit_manifest(f, lambda m: m.update(format_version=99)), "format_version 99 is not supported"),
    ],
    ids=["corrupt json", "no engine.json", "missing onnx", "no source", "no unet entry", "future format"],
)
def test_damaged_engine_dir_gives_clear_error(engines_copy, damage, message):
    damage(engines_copy)
    with pytest.raises(UserError, match=message):
        EngineDir.load(engines_copy)


def test_cli_refuses_a_damaged_engine_dir_without_traceback(engines_copy, tmp_path):
    (engines_copy / "engine.json").write_text("{not json")
    result = _generate_with_onnxruntime(engines_copy, tmp_path / "x.mp4")
    assert result.returncode == 2 and "is corrupt" in result.stderr and "Traceback" not in result.stderr


def test_check_prints_errors_and_passes(tiny_engines):
    result = run_cli("check", str(tiny_engines))
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("onnxruntime")]
    # Every shape generation sends: a guided text batch (with a repeated prompt) and one prompt; the UNet with and
    # without guidance and on the first frame alone; a full and a one-image VAE batch.
    assert [(row[1], row[2]) for row in rows] == [
        ("text_encoder", "batch=2"),
        ("text_encoder", "batch=1"),
        ("unet", "frames=8,batch=2"),
        ("unet", "frames=1,batch=2"),
        ("unet", "frames=8,batch=1"),
        ("vae_decoder", "images=8"),
        ("vae_decoder", "images=1"),
        # Fast mode's graphs (the session's export has them): the full step's noise and feature, and the shallow
        # branch on the feature torch cached.
        ("unet_caching", "noise,frames=8,batch=2"),
        ("unet_caching", "feature,frames=8,batch=2"),
        ("unet_cached", "frames=8,batch=2"),
    ]
    assert all(float(row[3]) <= TOLERANCE and row[-1] == "pass" for row in rows)
    assert all(float(row[6]) <= float(row[7]) == 1e-4 for row in rows), "judged relative to the output's RMS"
    assert "tensorrt: not checked" in result.stdout or any(
        line.startswith("tensorrt") for line in result.stdout.splitlines()
    )


def test_check_fails_when_a_tolerance_is_exceeded(tiny_engines):
    result = run_cli("check", str(tiny_engines), "--tolerance", "unet=1e-12")
    assert result.returncode == 1
    unet = next(line for line in result.stdout.splitlines() if line.startswith("onnxruntime") and " unet " in line)
    assert unet.endswith("FAIL")


def test_export_refuses_to_overwrite_and_bad_sizes(tiny_engines, tmp_path):
    result = run_cli("export", "tiny-random", "--out", str(tiny_engines))
    assert result.returncode == 2 and "already holds an export" in result.stderr
    result = run_cli("export", "tiny-random", "--out", str(tmp_path / "e"), "--height", "44")
    assert result.returncode == 2 and "multiple of 8" in result.stderr


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_export_records_the_output_dtype_without_running_the_model(tmp_path, dtype):
    """The exporter traces with fake tensors; an eager forward only to learn the output dtype cost minutes for a
    full-size fp16 UNet on a CPU. A hook counts forwards that receive real tensors: there must be none."""
    from export import exporter
    from t2v_fast.core.networks import NETWORKS

    components = load_components("tiny-random", device="cpu", dtype=dtype)
    eager_calls = []

    def count_real(module, args):
        if type(args[0]) is torch.Tensor:  # fake and functional tensors are subclasses; proxies are not tensors
            eager_calls.append(type(module).__name__)

    components.text_encoder.register_forward_pre_hook(count_real)
    info = exporter.ModelCard.from_components(components)
    settings = exporter.ExportSettings(frames=8)
    example = exporter._example_dims(info, settings)
    record = exporter._export_component(NETWORKS["text_encoder"], components, info, example, dtype, tmp_path, settings)
    assert eager_calls == []
    wanted = {torch.float32: "float32", torch.float16: "float16"}[dtype]
    assert record["outputs"][0]["dtype"] == wanted
    graph = onnx.load(str(tmp_path / "text_encoder.onnx")).graph
    assert onnx.helper.tensor_dtype_to_np_dtype(graph.output[0].type.tensor_type.elem_type).name == wanted


def test_onnx_unet_runs_below_the_traced_latent_range(tiny_engines, torch_components):
    """Tracing starts latent sizes at 3 (see networks.DYNAMIC_AXES), but the graph has no range: a 2×2 latent
    (16 px, the smallest size generation accepts) still matches PyTorch."""
    torch.manual_seed(0)
    sample, text, timestep = torch.randn(2, 3, 4, 2, 2), torch.randn(2, 77, 32), torch.tensor(641)
    with torch.no_grad():
        expected = VideoUNet(torch_components.unet)(sample, timestep, text)
    feeds = {"sample": sample.numpy(), "timestep": timestep.numpy(), "encoder_hidden_states": text.numpy()}
    _assert_close(_session(tiny_engines, "unet").run(None, feeds)[0], expected)


def test_an_export_optimised_for_onnxruntime_cuda_fuses_the_fp32_graph_then_converts(tmp_path):
    """ONNX Runtime's Stable Diffusion path (fuse fp32, then convert), through `t2v-fast export --optimize-for`: which
    fusions match our export is visible on the CPU. GroupNorm and NhwcConv fuse; attention does not (our
    MatMul-Softmax-MatMul with cross-frame keys is not ONNX Runtime's pattern), which engine.json records. The fused
    graphs hold CUDA-only contrib operators: every other runtime refuses them in one line. Speed: only on a GPU."""
    out = tmp_path / "cuda16"
    run_cli(
        "export",
        "tiny-random",
        "--dtype",
        "fp16",
        "--optimize-for",
        "onnxruntime-cuda",
        "--out",
        str(out),
        "--quiet",
        check=True,
    )
    engine_dir = EngineDir.load(out)
    assert engine_dir.export_settings.optimized_for == "onnxruntime-cuda"
    unet = engine_dir.component("unet")
    print(f"\nONNX Runtime fusions on the tiny UNet: {unet.fused_operators}")
    assert unet.fused_operators["GroupNorm"] + unet.fused_operators["SkipGroupNorm"] > 0
    assert unet.fused_operators["NhwcConv"] > 0
    assert unet.input_dtype("sample") == "float16" and unet.outputs[0]["dtype"] == "float16"
    assert engine_dir.component("text_encoder").input_dtype("input_ids") == "int64"
    graph = onnx.load(str(out / "unet.onnx")).graph
    assert {node.op_type for node in graph.node} >= {"GroupNorm", "NhwcConv"}
    half = onnx.TensorProto.FLOAT16
    weights = [t for t in graph.initializer if t.data_type in (onnx.TensorProto.FLOAT, half) and len(t.dims) > 1]
    assert weights and all(t.data_type == half for t in weights)
    with pytest.raises(UserError, match=r"was exported for onnxruntime-cuda .*not for onnxruntime-cpu"):
        load_pipeline(str(out), backend="onnxruntime")
    build = run_cli("build", str(out))
    assert build.returncode == 2 and "not for tensorrt" in build.stderr and "Traceback" not in build.stderr
