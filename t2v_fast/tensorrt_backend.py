"""TensorRT: build engines from the exported ONNX files, and run them behind the pipeline's model interface.

Split as in NVIDIA's TensorRT diffusion demo: `build_engines` (ONNX -> engine, with optimisation profiles and a reused
timing cache), `TrtEngine` (one engine, named I/O bound to device buffers, CUDA-graph replay for static shapes) and
`TensorRTBackend` (three engines on one CUDA stream). Engines are recorded in `engine.json` under a key made of the
component, TensorRT version, GPU compute capability and precision; loading refuses an engine whose ONNX or model hash,
TensorRT version or GPU does not match.

This module is written against the documented `tensorrt` (10.x) and Polygraphy APIs. TensorRT cannot be installed
where t2v-fast is developed, so it is exercised only on GPU machines (tests skip elsewhere, saying why).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .engine_dir import COMPONENTS, EngineDir
from .errors import UserError
from .models import ModelInfo

PRECISIONS = ("fp16", "bf16", "fp32")
INSTALL_HINT = "TensorRT is not installed: pip install 't2v-fast[tensorrt]' on a machine with an NVIDIA GPU"


def import_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    return tensorrt


def compute_capability(device: torch.device | None = None) -> str:
    if not torch.cuda.is_available():
        raise UserError("TensorRT engines need a CUDA GPU, and none is available here")
    major, minor = torch.cuda.get_device_capability(device)
    return f"{major}.{minor}"


@dataclass(frozen=True)
class AxisRange:
    minimum: int
    optimum: int
    maximum: int

    @classmethod
    def parse(cls, text: str, name: str) -> AxisRange:
        """`N` (static) or `MIN:OPT:MAX`."""
        try:
            values = [int(v) for v in text.split(":")]
        except ValueError:
            raise UserError(f"--{name} must be N or MIN:OPT:MAX with integers, got {text!r}") from None
        if len(values) == 1:
            values *= 3
        if len(values) != 3 or not 1 <= values[0] <= values[1] <= values[2]:
            raise UserError(f"--{name} must be N or MIN:OPT:MAX with 1 <= MIN <= OPT <= MAX, got {text!r}")
        return cls(*values)

    def scaled(self, factor: int) -> AxisRange:
        return AxisRange(self.minimum * factor, self.optimum * factor, self.maximum * factor)


@dataclass(frozen=True)
class BuildRanges:
    """Ranges of the user-facing quantities; each component's input profile is derived from them."""

    videos: AxisRange
    frames: AxisRange
    height: AxisRange
    width: AxisRange
    decode_batch: int = 8

    def profiles(self, info: ModelInfo) -> dict[str, dict[str, list[list[int]]]]:
        """Per component, per input: [min, opt, max] shapes. Guidance doubles the UNet and text batches."""
        for name, axis in (("height", self.height), ("width", self.width)):
            for value in (axis.minimum, axis.optimum, axis.maximum):
                if value % info.size_multiple:
                    raise UserError(f"--{name} values must be multiples of {info.size_multiple}, got {value}")
        latent_h, latent_w = (
            AxisRange(*(v // info.vae_scale_factor for v in (a.minimum, a.optimum, a.maximum)))
            for a in (self.height, self.width)
        )
        batch = self.videos.scaled(2)
        images = AxisRange(1, min(self.decode_batch, self.frames.optimum * self.videos.optimum), self.decode_batch)
        tokens, channels = info.text_max_length, info.latent_channels

        def shapes(*axes: AxisRange | int) -> list[list[int]]:
            return [
                [a if isinstance(a, int) else getattr(a, field) for a in axes]
                for field in ("minimum", "optimum", "maximum")
            ]

        return {
            "text_encoder": {"input_ids": shapes(batch, tokens)},
            "unet": {
                "sample": shapes(batch, self.frames, channels, latent_h, latent_w),
                "timestep": [[], [], []],
                "encoder_hidden_states": shapes(batch, tokens, info.text_dim),
            },
            "vae_decoder": {"latents": shapes(images, channels, latent_h, latent_w)},
        }


def engine_key(component: str, tensorrt_version: str, capability: str, precision: str) -> str:
    return f"{component}.trt{tensorrt_version}.sm{capability.replace('.', '')}.{precision}"


def select_engine(engine_dir: EngineDir, component: str, tensorrt_version: str, capability: str) -> dict[str, Any]:
    """The recorded engine for this component that matches this TensorRT and GPU, or an error saying to rebuild."""
    onnx_sha = engine_dir.manifest["components"][component]["sha256"]
    weights_sha = engine_dir.source["weights_sha256"]
    candidates = [e for e in engine_dir.manifest["engines"].values() if e.get("component") == component]
    if not candidates:
        raise UserError(
            f"no TensorRT engine for {component} in {engine_dir.path}; build one: t2v-fast build {engine_dir.path}"
        )
    rebuild = f"rebuild with: t2v-fast build {engine_dir.path}"
    for entry in candidates:
        if entry.get("tensorrt_version") != tensorrt_version or entry.get("compute_capability") != capability:
            continue
        if entry.get("onnx_sha256") != onnx_sha or entry.get("weights_sha256") != weights_sha:
            raise UserError(
                f"the {component} engine {entry['file']} was built from another export (hash mismatch); {rebuild}"
            )
        if not (engine_dir.path / entry["file"]).is_file():
            raise UserError(f"engine file {engine_dir.path / entry['file']} is missing; {rebuild}")
        return entry
    built = ", ".join(f"TensorRT {e.get('tensorrt_version')} on sm_{e.get('compute_capability')}" for e in candidates)
    raise UserError(
        f"the {component} engines were built for {built}, not TensorRT {tensorrt_version} on sm_{capability}; {rebuild}"
    )


def check_in_profile(component: str, name: str, shape: tuple[int, ...], profile: list[list[int]]) -> None:
    """Refuse a shape outside the engine's optimisation profile, naming the valid range."""
    low, _, high = profile
    if len(shape) != len(low) or any(not lo <= s <= hi for s, lo, hi in zip(shape, low, high, strict=True)):
        raise UserError(
            f"{component} input {name} has shape {list(shape)}, outside the engine's profile {low} .. {high};"
            " rebuild with wider ranges (t2v-fast build --videos/--frames/--height/--width)"
        )


def build_engines(
    engine_dir: EngineDir,
    ranges: BuildRanges,
    precision: str = "fp16",
    timing_cache: Path | None = None,
    progress: bool = True,
) -> list[str]:
    """Build one engine per component with Polygraphy, record them in engine.json, return their keys."""
    trt = import_tensorrt()
    from polygraphy.backend.trt import CreateConfig, Profile, engine_from_network, network_from_onnx_path, save_engine

    if precision not in PRECISIONS:
        raise UserError(f"invalid precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    capability = compute_capability()
    info = engine_dir.info
    profiles = ranges.profiles(info)
    timing_cache = timing_cache or engine_dir.path / "timing.cache"
    keys = []
    for component in COMPONENTS:
        engine_dir.verify_onnx(component)
        key = engine_key(component, trt.__version__, capability, precision)
        profile = Profile()
        for name, (low, opt, high) in profiles[component].items():
            profile.add(name, min=low, opt=opt, max=high)
        started = time.perf_counter()
        network = network_from_onnx_path(str(engine_dir.onnx_path(component)))
        config = CreateConfig(
            fp16=precision == "fp16",
            bf16=precision == "bf16",
            profiles=[profile],
            load_timing_cache=str(timing_cache) if timing_cache.exists() else None,
        )
        engine = engine_from_network(network, config=config, save_timing_cache=str(timing_cache))
        save_engine(engine, str(engine_dir.path / f"{key}.plan"))
        engine_dir.manifest["engines"][key] = {
            "component": component,
            "file": f"{key}.plan",
            "tensorrt_version": trt.__version__,
            "compute_capability": capability,
            "gpu": torch.cuda.get_device_name(),
            "precision": precision,
            "profile": profiles[component],
            "static": ranges.videos.minimum == ranges.videos.maximum
            and ranges.frames.minimum == ranges.frames.maximum
            and ranges.height.minimum == ranges.height.maximum
            and ranges.width.minimum == ranges.width.maximum,
            "onnx_sha256": engine_dir.manifest["components"][component]["sha256"],
            "weights_sha256": engine_dir.source["weights_sha256"],
            "build_seconds": round(time.perf_counter() - started, 1),
        }
        engine_dir.save()
        keys.append(key)
        if progress:
            print(f"built {key}.plan in {engine_dir.manifest['engines'][key]['build_seconds']} s")
    return keys


class TrtEngine:
    """One TensorRT engine: named input/output tensors bound to device buffers, run on one CUDA stream.

    With `use_cuda_graph` (static-shape engines), the first call at a shape captures the enqueue into a CUDA graph and
    later calls only copy inputs into the bound buffers and replay it.
    """

    def __init__(self, path: Path, profile: dict[str, list[list[int]]], component: str, use_cuda_graph: bool):
        trt = import_tensorrt()
        self.trt = trt
        self.component = component
        self.profile = profile
        self.use_cuda_graph = use_cuda_graph
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise UserError(f"TensorRT could not load {path}; rebuild it with t2v-fast build")
        self.context = self.engine.create_execution_context()
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.buffers: dict[str, torch.Tensor] = {}
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_shapes: dict[str, tuple[int, ...]] = {}

    def _is_input(self, name: str) -> bool:
        return self.engine.get_tensor_mode(name) == self.trt.TensorIOMode.INPUT

    def torch_dtype(self, name: str) -> torch.dtype:
        trt = self.trt
        dtypes = {
            trt.float32: torch.float32,
            trt.float16: torch.float16,
            trt.bfloat16: torch.bfloat16,
            trt.int32: torch.int32,
            trt.int64: torch.int64,
        }
        return dtypes[self.engine.get_tensor_dtype(name)]

    def _allocate(self, shapes: dict[str, tuple[int, ...]], device: torch.device) -> None:
        for name, shape in shapes.items():
            check_in_profile(self.component, name, shape, self.profile[name])
            self.context.set_input_shape(name, shape)
        for name in self.names:
            shape = tuple(self.context.get_tensor_shape(name))
            self.buffers[name] = torch.empty(shape, dtype=self.torch_dtype(name), device=device)
            self.context.set_tensor_address(name, self.buffers[name].data_ptr())
        self.graph = None

    def __call__(self, stream: torch.cuda.Stream, **inputs: torch.Tensor) -> torch.Tensor:
        shapes = {name: tuple(tensor.shape) for name, tensor in inputs.items()}
        if shapes != self.graph_shapes:
            self._allocate(shapes, stream.device)
            self.graph_shapes = shapes
        output = next(name for name in self.names if not self._is_input(name))
        stream.wait_stream(torch.cuda.current_stream(stream.device))  # inputs were produced on the caller's stream
        with torch.cuda.stream(stream):
            for name, tensor in inputs.items():
                self.buffers[name].copy_(tensor)
            if self.graph is not None:
                self.graph.replay()
            elif self.use_cuda_graph:
                self.context.execute_async_v3(stream.cuda_stream)  # warm-up run before capture
                self.graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(self.graph, stream=stream):
                    self.context.execute_async_v3(stream.cuda_stream)
                self.graph.replay()
            elif not self.context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError(f"TensorRT execution of {self.component} failed")
            result = self.buffers[output].clone()
        torch.cuda.current_stream(stream.device).wait_stream(stream)
        return result


class TensorRTBackend:
    """Text encoder, UNet and VAE decoder engines of an engine directory, on one CUDA stream."""

    name = "tensorrt"

    def __init__(self, engine_dir: EngineDir, device: str | None = None):
        trt = import_tensorrt()
        self.device = torch.device(device or "cuda")
        capability = compute_capability(self.device)
        self.info = engine_dir.info
        self.stream = torch.cuda.Stream(self.device)
        self.engines = {}
        for component in COMPONENTS:
            entry = select_engine(engine_dir, component, trt.__version__, capability)
            self.engines[component] = TrtEngine(
                engine_dir.path / entry["file"], entry["profile"], component, use_cuda_graph=entry.get("static", False)
            )
        self.dtype = self.engines["unet"].torch_dtype("sample")

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.engines["text_encoder"](self.stream, input_ids=input_ids.to(self.device, torch.int64))

    def predict_noise(
        self, sample: torch.Tensor, timestep: torch.Tensor, text_embeddings: torch.Tensor
    ) -> torch.Tensor:
        return self.engines["unet"](
            self.stream, sample=sample, timestep=timestep.to(self.device), encoder_hidden_states=text_embeddings
        )

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return self.engines["vae_decoder"](self.stream, latents=latents)
