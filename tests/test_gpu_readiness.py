"""GPU-path logic that the CPU can check: channels-last layout, ONNX Runtime provider choice and stream order,
static TensorRT profiles against the pipeline's chunk plan, and `t2v-fast check`'s tolerances."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from t2v_fast.backends.torch import TorchBackend
from t2v_fast.core.models import load_components

# Same weights and inputs, only the memory layout differs: float32 accumulation order, relative to the output's RMS.
LAYOUT_TOLERANCE = 1e-5


@pytest.mark.parametrize("preset", ["tiny-random", "modelscope-tiny-random"])
def test_channels_last_applies_to_2d_convolutions_only_and_changes_nothing(preset):
    """On CUDA channels-last is the default; ModelScope's 5-D Conv3d weights made construction raise."""
    components = load_components(preset, device="cpu", dtype="float32")
    plain = TorchBackend(components, channels_last=False)
    sample = torch.randn(2, 3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    text = torch.randn(2, 77, 32, generator=torch.Generator().manual_seed(1))
    expected = plain.predict_noise(sample, torch.tensor(501), text)
    backend = TorchBackend(components, channels_last=True)
    convolutions = [m for m in backend.unet.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))]
    assert convolutions
    for layer in convolutions:
        expected_layout = torch.channels_last if layer.weight.dim() == 4 else torch.contiguous_format
        assert layer.weight.is_contiguous(memory_format=expected_layout), type(layer).__name__
    actual = backend.predict_noise(sample, torch.tensor(501), text)
    rms = expected.pow(2).mean().sqrt()
    assert (actual - expected).abs().max() <= LAYOUT_TOLERANCE * rms


def test_check_judges_errors_relative_to_the_output_rms():
    """An absolute 1e-4 passed any error on a near-zero output and failed float32 noise on a large one."""
    from t2v_fast.backends.check import DEFAULT_TOLERANCES, compare

    generator = torch.Generator().manual_seed(0)
    tolerance = DEFAULT_TOLERANCES["fp32"]["text_encoder"]
    large = 50 * torch.randn(2, 77, 32, generator=generator)
    rounding = large + large.abs().max() * 2**-23 * torch.randn(large.shape, generator=generator)  # fp32 ulps
    assert compare("x", "text_encoder", "large", rounding, large, tolerance).passed
    small = 1e-3 * torch.randn(2, 77, 32, generator=generator)
    wrong = small + 5e-5  # 5 % of the output's size: a real error
    result = compare("x", "text_encoder", "small", wrong, small, tolerance)
    assert not result.passed and result.relative_error == pytest.approx(5e-2, rel=0.05)


def test_fp16_unet_tolerance_is_not_tighter_than_the_full_size_test():
    from t2v_fast.backends.check import DEFAULT_TOLERANCES

    full_size_fp16 = 5e-2  # tests/test_export_full_size.py, on an output of RMS ~1
    assert DEFAULT_TOLERANCES["fp16"]["unet"] >= full_size_fp16


def test_fp32_engines_are_built_with_tf32_off(tiny_engines, tmp_path, monkeypatch):
    """TensorRT turns TF32 on by default; fp32 engines held to fp32's tolerance must build without it. TensorRT
    cannot be installed here, so Polygraphy's documented entry points are recorded by stand-ins."""
    import shutil
    import sys
    import types

    from export import tensorrt_build
    from t2v_fast.core.engine_dir import EngineDir
    from t2v_fast.core.profiles import default_ranges

    configs = []
    polygraphy = types.ModuleType("polygraphy.backend.trt")
    polygraphy.CreateConfig = lambda **kwargs: configs.append(kwargs) or kwargs
    polygraphy.Profile = lambda: types.SimpleNamespace(add=lambda *args, **kwargs: None)
    polygraphy.network_from_onnx_path = lambda path, strongly_typed: (path, strongly_typed)
    polygraphy.engine_from_network = lambda network, config, save_timing_cache: b"plan"
    polygraphy.save_engine = lambda engine, path: Path(path).write_bytes(engine)
    for name in ("polygraphy", "polygraphy.backend"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "polygraphy.backend.trt", polygraphy)
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="11.4.0"))
    monkeypatch.setattr(tensorrt_build, "compute_capability", lambda device=None: "9.0")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "stand-in GPU")
    folder = tmp_path / "engines"
    shutil.copytree(tiny_engines, folder)
    engine_dir = EngineDir.load(folder)
    ranges = default_ranges(engine_dir, static=True)
    tensorrt_build.build_engines(engine_dir, ranges, "fp32", progress=False)
    # One engine per exported network: the session's export has fast mode's two graphs beside the three.
    assert len(configs) == 5 and all(config["tf32"] is False for config in configs)


GPU_BUILD = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.mark.parametrize(
    ("available", "tensorrt_loads", "first"),
    [
        (GPU_BUILD, False, "CUDAExecutionProvider"),
        (GPU_BUILD, True, "TensorrtExecutionProvider"),
        (GPU_BUILD[1:], False, "CUDAExecutionProvider"),
        (["CPUExecutionProvider"], False, "CPUExecutionProvider"),
    ],
    ids=["gpu wheel without TensorRT", "gpu wheel with TensorRT", "cuda build", "cpu build"],
)
def test_onnxruntime_provider_choice(available, tensorrt_loads, first):
    from t2v_fast.backends.onnxruntime import choose_providers

    providers, reason = choose_providers(available, tensorrt_loads=lambda: tensorrt_loads)
    assert providers[0] == first and providers[-1] == "CPUExecutionProvider" and reason.startswith(first)
    if "TensorrtExecutionProvider" in available and not tensorrt_loads:
        assert "TensorrtExecutionProvider" not in providers and "libnvinfer" in reason


def test_the_gpu_wheel_defaults_to_cuda_where_tensorrt_does_not_load(monkeypatch):
    """The public entry point, with the GPU wheel's provider list; TensorRT's libraries are absent here."""
    import onnxruntime

    from t2v_fast.backends.onnxruntime import onnxruntime_providers, tensorrt_libraries_load

    assert not tensorrt_libraries_load()
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: list(GPU_BUILD))
    assert onnxruntime_providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    from t2v_fast.errors import UserError

    with pytest.raises(UserError, match="not available here: ROCMExecutionProvider"):
        onnxruntime_providers(["ROCMExecutionProvider"])


def test_cuda_provider_options_are_onnxruntimes_own(tiny_engines):
    from t2v_fast.backends.onnxruntime import provider_options
    from t2v_fast.core.engine_dir import EngineDir

    options = provider_options(EngineDir.load(tiny_engines), "unet", "CUDAExecutionProvider", 1)
    assert options == {
        "device_id": "1",
        "arena_extend_strategy": "kSameAsRequested",
        "cudnn_conv_algo_search": "EXHAUSTIVE",
        "cudnn_conv_use_max_workspace": "1",
    }


class RecordingSession:
    """An ONNX Runtime session whose IOBinding calls are recorded in order (the real session runs them)."""

    def __init__(self, session, events):
        self.session, self.events = session, events

    def io_binding(self):
        binding, events = self.session.io_binding(), self.events

        class Binding:
            def __getattr__(self, name):
                attribute = getattr(binding, name)
                if name.startswith("synchronize"):
                    return lambda: (events.append(name), attribute())[1]
                return attribute

        return Binding()

    def run_with_iobinding(self, binding, run_options=None):
        self.events.append("run")
        return self.session.run_with_iobinding(binding, run_options)  # forwards `_iobinding` to the real one

    def __getattr__(self, name):
        return getattr(self.session, name)


def test_iobinding_runs_are_synchronised_like_onnxruntimes_helpers(tiny_engines):
    """ORT's CUDA stream does not wait for torch's: inputs are synchronised before the run, outputs after (a CPU
    session records the order; on CUDA the same calls also order the streams). Results are unchanged."""
    from t2v_fast.backends.onnxruntime import OnnxRuntimeBackend
    from t2v_fast.core.engine_dir import EngineDir

    backend = OnnxRuntimeBackend(EngineDir.load(tiny_engines))
    sample = torch.randn(2, 3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    text = torch.randn(2, 77, 32, generator=torch.Generator().manual_seed(1))
    expected = backend.predict_noise(sample, torch.tensor(401), text)
    events: list[str] = []
    backend.sessions["unet"] = RecordingSession(backend.sessions["unet"], events)
    actual = backend.predict_noise(sample, torch.tensor(401), text)
    assert events == ["synchronize_inputs", "run", "synchronize_outputs"]
    assert torch.equal(actual, expected)


def test_cuda_peak_memory_is_the_devices_not_only_torchs(monkeypatch):
    """ONNX Runtime's arena and TensorRT's engines are invisible to `max_memory_allocated`; the device's used memory
    (cudaMemGetInfo, sampled) sees them. CUDA is simulated: the sampling logic is what is tested."""
    import time

    from benchmarks.measure import PeakMemory

    used = {"bytes": 1_000}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10_000 - used["bytes"], 10_000))
    for name in ("synchronize", "reset_peak_memory_stats"):
        monkeypatch.setattr(torch.cuda, name, lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 100)
    memory = PeakMemory(torch.device("cuda"))
    with memory.track():
        used["bytes"] = 7_000  # e.g. another runtime's allocation, freed before the block ends
        time.sleep(0.2)
        used["bytes"] = 2_000
    assert (memory.baseline_bytes, memory.peak_bytes, memory.allocator_peak_bytes) == (1_000, 7_000, 100)
