"""TensorRT: build engines from the exported ONNX files, and run them behind the pipeline's model interface.

Split as in NVIDIA's TensorRT diffusion demo: `build_engines` (ONNX -> engine, strongly typed, with optimisation
profiles and a timing cache), `TrtEngine` (one engine, one execution context per profile, named I/O bound to device
buffers, CUDA graphs per shape for fixed-shape profiles) and `TensorRTBackend` (three engines on one CUDA stream,
sharing one block of device memory). Engines are recorded in `engine.json`; loading refuses an engine whose ONNX or
model hash, TensorRT version, GPU or precision does not match.

Precision is carried by the ONNX file (`t2v-fast export --dtype fp16`) and the network is built strongly typed, as
NVIDIA's demo does: TensorRT 11 removed the weakly typed fp16/bf16 builder flags, so this works on 10.x and 11.x.

Written against the documented `tensorrt` (10.x/11.x) and Polygraphy (0.49+) APIs. CI has neither TensorRT nor a GPU,
so this path is not exercised there: its GPU tests skip, saying why; everything that needs no GPU (profiles, engine
selection, locking) is tested on the CPU.
"""

from __future__ import annotations

import functools
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .engine_dir import EngineDir, EngineRecord
from .errors import UserError
from .families import TEXT2VIDEO_ZERO
from .models import ModelInfo
from .networks import COMPONENTS, DECODE_BATCH_SIZE, NETWORKS, dims
from .runtime import DeviceScalars

# Engines carry the precision of the ONNX they were built from (strongly typed networks).
PRECISIONS = {"fp32": "fp32", "fp16": "fp16"}
INSTALL_HINT = "TensorRT is not installed: pip install 't2v-fast[tensorrt]' on a machine with an NVIDIA GPU"

Profile = dict[str, list[list[int]]]  # input name -> [min, opt, max] shape


def import_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    return tensorrt


@functools.cache
def trt_logger():
    """One TensorRT logger per process, as TensorRT expects."""
    trt = import_tensorrt()
    return trt.Logger(trt.Logger.WARNING)


def compute_capability(device: torch.device | None = None) -> str:
    if not torch.cuda.is_available():
        raise UserError("TensorRT engines need a CUDA GPU, and this machine has none")
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

    @property
    def is_fixed(self) -> bool:
        return self.minimum == self.maximum


@dataclass(frozen=True)
class BuildRanges:
    """Ranges of the user-facing quantities; each component's optimisation profiles are derived from them.

    What the pipeline sends (see `pipeline.py`), and so what the profiles must cover: the text encoder gets the unique
    texts of a call, 1 to 2×videos; the UNet gets videos×2 with guidance or videos without, and 1 frame (the first
    frame, denoised alone) or a whole video or chunk; the VAE gets 1 to `decode_batch` images per call.
    """

    videos: AxisRange
    frames: AxisRange
    height: AxisRange
    width: AxisRange
    decode_batch: int = DECODE_BATCH_SIZE

    @property
    def is_static(self) -> bool:
        return all(a.is_fixed for a in (self.videos, self.frames, self.height, self.width))

    def _dims(self, info: ModelInfo, point: str, unet_batch: int, frames: int, images: int) -> dict[str, int]:
        height, width = getattr(self.height, point), getattr(self.width, point)
        return dims(info, videos=unet_batch, frames=frames, height=height, width=width, images=images)

    def profiles(self, info: ModelInfo) -> dict[str, list[Profile]]:
        """Per component, its optimisation profiles (per input: [min, opt, max] shapes).

        Static ranges give the UNet one fixed-shape profile per shape it receives (guidance on and off × the first
        frame alone, which only Text2Video-Zero sends, and all frames: a chunked video's chunks all have the frame
        count, see `pipeline.plan_chunks`), so that each can replay a CUDA graph; dynamic ranges give one profile that
        spans them. The text encoder and the VAE run a few times per video and always get one ranged profile.
        """
        for name, axis in (("height", self.height), ("width", self.width)):
            for value in (axis.minimum, axis.optimum, axis.maximum):
                if value % info.size_multiple:
                    raise UserError(f"--{name} values must be multiples of {info.size_multiple}, got {value}")
        videos, frames = self.videos, self.frames
        images = (1, min(self.decode_batch, frames.optimum * videos.optimum), self.decode_batch)
        text_batch = (1, 2 * videos.optimum, 2 * videos.maximum)
        low, opt, high = (
            self._dims(info, point, batch, 1, image)
            for point, batch, image in zip(("minimum", "optimum", "maximum"), text_batch, images, strict=True)
        )
        ranged = {name: [NETWORKS[name].profile(low, opt, high)] for name in ("text_encoder", "vae_decoder")}
        if self.is_static:
            # Text2Video-Zero denoises its first frame alone (1 frame); ModelScope only ever sends whole videos.
            counts = (1, frames.minimum) if info.family == TEXT2VIDEO_ZERO.name else (frames.minimum,)
            batches = (videos.minimum, 2 * videos.minimum)
            shapes = sorted({(batch, count) for batch in batches for count in counts})
            fixed = [self._dims(info, "minimum", batch, count, 1) for batch, count in shapes]
            unet = [NETWORKS["unet"].profile(shape, shape, shape) for shape in fixed]
        else:
            unet_low = self._dims(info, "minimum", videos.minimum, 1, 1)
            unet_opt = self._dims(info, "optimum", 2 * videos.optimum, frames.optimum, 1)
            unet_high = self._dims(info, "maximum", 2 * videos.maximum, frames.maximum, 1)
            unet = [NETWORKS["unet"].profile(unet_low, unet_opt, unet_high)]
        return {"text_encoder": ranged["text_encoder"], "unet": unet, "vae_decoder": ranged["vae_decoder"]}


AXES = ("videos", "frames", "height", "width")


def default_ranges(engine_dir: EngineDir, static: bool, given: dict[str, AxisRange] | None = None) -> BuildRanges:
    """Ranges around the export's example shapes: exactly them with `static`, else room for 1-4 videos and from 1
    frame to twice the export's (at least 24) at the export's size; `given` ranges override either. The export's
    frame count is its family's default unless chosen (8 Text2Video-Zero: 1-24 frames; 16 ModelScope: 1-32)."""
    export, native = engine_dir.export_settings, engine_dir.info.native_size
    exported = {
        "videos": export.videos,
        "frames": export.frames,
        "height": export.height or native,
        "width": export.width or native,
    }
    dynamic = {
        "videos": AxisRange(1, export.videos, max(export.videos, 4)),
        "frames": AxisRange(1, export.frames, max(2 * export.frames, 24)),
    }
    ranges = {}
    for axis, value in exported.items():
        fixed = AxisRange(value, value, value)
        ranges[axis] = fixed if static else dynamic.get(axis, fixed)
    return BuildRanges(**{**ranges, **(given or {})})


def profile_index(profiles: list[Profile], shapes: dict[str, tuple[int, ...]]) -> int | None:
    """The first profile that admits every input shape, or None."""
    for index, profile in enumerate(profiles):
        if all(_within(shapes[name], profile[name]) for name in shapes):
            return index
    return None


def _within(shape: tuple[int, ...], limits: list[list[int]]) -> bool:
    low, _, high = limits
    return len(shape) == len(low) and all(lo <= s <= hi for s, lo, hi in zip(shape, low, high, strict=True))


def is_fixed(profile: Profile) -> bool:
    return all(limits[0] == limits[2] for limits in profile.values())


def check_in_profiles(component: str, shapes: dict[str, tuple[int, ...]], profiles: list[Profile]) -> int:
    """The profile to run `shapes` with; a shape outside every profile is refused, naming the valid ranges."""
    index = profile_index(profiles, shapes)
    if index is None:
        ranges = "; ".join(
            ", ".join(f"{name} {limits[0]} .. {limits[2]}" for name, limits in p.items() if name in shapes)
            for p in profiles
        )
        given = ", ".join(f"{name} {list(shape)}" for name, shape in shapes.items())
        raise UserError(
            f"{component} inputs {given} are outside the engine's profiles ({ranges});"
            " rebuild with wider ranges (t2v-fast build --videos/--frames/--height/--width)"
        )
    return index


def engine_key(component: str, tensorrt_version: str, capability: str, precision: str, static: bool) -> str:
    kind = "static" if static else "dynamic"
    return f"{component}.trt{tensorrt_version}.sm{capability.replace('.', '')}.{precision}.{kind}"


def select_engine(
    engine_dir: EngineDir, component: str, tensorrt_version: str, capability: str, precision: str
) -> EngineRecord:
    """The newest fresh engine for this component, TensorRT version, GPU and precision, or an error saying why not.

    A stale engine (built from another ONNX file or model) never hides a fresh one recorded beside it.
    """
    rebuild = f"rebuild with: t2v-fast build {engine_dir.path}"
    candidates = [e for e in engine_dir.engines().values() if e.component == component]
    if not candidates:
        raise UserError(
            f"no TensorRT engine for {component} in {engine_dir.path}; build one: t2v-fast build {engine_dir.path}"
        )
    of_precision = [e for e in candidates if e.precision == precision]
    if not of_precision:
        built = ", ".join(sorted({e.precision for e in candidates}))
        raise UserError(
            f"no {precision} TensorRT engine for {component} in {engine_dir.path} (built: {built}); {rebuild}"
        )
    here = [e for e in of_precision if (e.tensorrt_version, e.compute_capability) == (tensorrt_version, capability)]
    if not here:
        built = ", ".join(f"TensorRT {e.tensorrt_version} on sm_{e.compute_capability}" for e in of_precision)
        raise UserError(
            f"the {component} engines were built for {built}, not TensorRT {tensorrt_version} on sm_{capability};"
            f" {rebuild}"
        )
    onnx_sha = engine_dir.component(component).sha256
    fresh = [e for e in here if (e.onnx_sha256, e.weights_sha256) == (onnx_sha, engine_dir.weights_sha256)]
    if not fresh:
        stale = here[0].file
        raise UserError(f"the {component} engine {stale} was built from another export (hash mismatch); {rebuild}")
    present = [e for e in fresh if (engine_dir.path / e.file).is_file()]
    if not present:
        raise UserError(f"engine file {engine_dir.path / fresh[0].file} is missing; {rebuild}")
    return max(present, key=lambda e: e.built_at)


def timing_cache_path(engine_dir: EngineDir, tensorrt_version: str, capability: str) -> Path:
    """Timing measurements are only valid for one TensorRT version on one GPU architecture."""
    return engine_dir.path / f"timing.trt{tensorrt_version}.sm{capability.replace('.', '')}.cache"


def build_engines(
    engine_dir: EngineDir,
    ranges: BuildRanges,
    precision: str | None = None,
    timing_cache: Path | None = None,
    progress: bool = True,
) -> list[str]:
    """Build one strongly typed engine per component with Polygraphy, record them in engine.json, return their keys.

    `precision` must be the export's (the ONNX file carries it); None takes it from the export."""
    engine_dir.check_runs_on("tensorrt")
    trt = import_tensorrt()
    from polygraphy.backend.trt import CreateConfig, Profile, engine_from_network, network_from_onnx_path, save_engine

    exported = engine_dir.export_settings.dtype
    precision = precision or exported
    if precision != exported:
        raise UserError(
            f"{engine_dir.path} was exported in {exported}, and engines take the precision of their ONNX files:"
            f" export again with --dtype {precision} to build {precision} engines"
        )
    capability = compute_capability()
    profiles = ranges.profiles(engine_dir.info)
    timing_cache = timing_cache or timing_cache_path(engine_dir, trt.__version__, capability)
    keys = []
    for component in COMPONENTS:
        engine_dir.verify_onnx(component)
        key = engine_key(component, trt.__version__, capability, precision, ranges.is_static)
        trt_profiles = []
        for shapes in profiles[component]:
            profile = Profile()
            for name, (low, opt, high) in shapes.items():
                profile.add(name, min=low, opt=opt, max=high)
            trt_profiles.append(profile)
        started = time.perf_counter()
        network = network_from_onnx_path(str(engine_dir.onnx_path(component)), strongly_typed=True)
        config = CreateConfig(
            # fp32 engines are the accuracy reference (`t2v-fast check` holds them to fp32's 1e-4): TF32, on by
            # default in TensorRT, would round matmul and convolution inputs to 10-bit mantissas. fp16 is the fast path.
            tf32=False,
            profiles=trt_profiles,
            load_timing_cache=str(timing_cache) if timing_cache.exists() else None,
        )
        engine = engine_from_network(network, config=config, save_timing_cache=str(timing_cache))
        path = engine_dir.path / f"{key}.plan"
        save_engine(engine, str(path))
        record = EngineRecord(
            component=component,
            file=path.name,
            tensorrt_version=trt.__version__,
            compute_capability=capability,
            onnx_sha256=engine_dir.component(component).sha256,
            weights_sha256=engine_dir.weights_sha256,
            profiles=profiles[component],
            precision=precision,
            gpu=torch.cuda.get_device_name(),
            static=ranges.is_static,
            build_seconds=round(time.perf_counter() - started, 1),
            built_at=time.time(),
            sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
            bytes=path.stat().st_size,
        )
        engine_dir.record_engine(key, record)
        keys.append(key)
        if progress:
            print(f"built {record.file} in {record.build_seconds} s")
    return keys


def load_plan(engine_dir: EngineDir, record: EngineRecord) -> bytes:
    """The engine's bytes, checked against the size and hash recorded at build (from the bytes read anyway)."""
    path = engine_dir.path / record.file
    plan = path.read_bytes()
    if record.sha256 and (len(plan) != record.bytes or hashlib.sha256(plan).hexdigest() != record.sha256):
        raise UserError(f"engine file {path} does not match engine.json (modified or truncated); rebuild it")
    return plan


class TrtEngine:
    """One TensorRT engine: one execution context per optimisation profile, run on one CUDA stream.

    For each input shape the engine sees, output buffers are allocated once and bound by name. On fixed-shape
    profiles, the first call at a shape captures the enqueue into a CUDA graph and later calls only copy inputs into
    the bound buffers and replay it; ranged profiles enqueue every call.
    """

    def __init__(self, plan: bytes, record: EngineRecord, device: torch.device, stream: torch.cuda.Stream):
        trt = import_tensorrt()
        self.trt = trt
        self.component = record.component
        self.profiles = record.profiles
        self.device = device
        self.stream = stream
        self.engine = trt.Runtime(trt_logger()).deserialize_cuda_engine(plan)
        if self.engine is None:
            raise UserError(f"TensorRT could not load {record.file}; rebuild it with t2v-fast build")
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.output = next(n for n in self.names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        # Memory is provided by the backend (one block for every context of every engine: they run one at a time).
        strategy = trt.ExecutionContextAllocationStrategy.USER_MANAGED
        self.contexts = [self.engine.create_execution_context(strategy) for _ in self.profiles]
        for index, context in enumerate(self.contexts):
            context.set_optimization_profile_async(index, stream.cuda_stream)
        stream.synchronize()
        self.bound: dict[int, tuple[int, tuple]] = {}  # context -> the shapes its addresses are set for
        self.buffers: dict[tuple[int, tuple], dict[str, torch.Tensor]] = {}
        self.graphs: dict[tuple[int, tuple], torch.cuda.CUDAGraph] = {}

    @property
    def device_memory_size(self) -> int:
        size = getattr(self.engine, "device_memory_size_v2", None)
        return int(size if size is not None else self.engine.device_memory_size)

    def use_device_memory(self, block: torch.Tensor) -> None:
        for context in self.contexts:
            if hasattr(context, "set_device_memory"):
                context.set_device_memory(block.data_ptr(), block.numel())
            else:
                context.device_memory = block.data_ptr()

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

    def _bind(self, index: int, key: tuple) -> dict[str, torch.Tensor]:
        """Set the context's input shapes and tensor addresses for `key`, allocating its buffers the first time."""
        context, shapes = self.contexts[index], dict(key[1])
        for name, shape in shapes.items():
            if not context.set_input_shape(name, shape):
                raise RuntimeError(f"TensorRT refused shape {shape} for {self.component} input {name}")
        if key not in self.buffers:
            self.buffers[key] = {
                name: torch.empty(
                    tuple(context.get_tensor_shape(name)), dtype=self.torch_dtype(name), device=self.device
                )
                for name in self.names
            }
        for name, buffer in self.buffers[key].items():
            if not context.set_tensor_address(name, buffer.data_ptr()):
                raise RuntimeError(f"TensorRT refused the address of {self.component} tensor {name}")
        self.bound[index] = key
        return self.buffers[key]

    def _enqueue(self, context: Any) -> None:
        if not context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError(f"TensorRT execution of {self.component} failed")

    def __call__(self, **inputs: torch.Tensor) -> torch.Tensor:
        shapes = {name: tuple(tensor.shape) for name, tensor in inputs.items()}
        index = check_in_profiles(self.component, shapes, self.profiles)
        key = (index, tuple(sorted(shapes.items())))
        buffers = self.buffers[key] if self.bound.get(index) == key else self._bind(index, key)
        context = self.contexts[index]
        self.stream.wait_stream(torch.cuda.current_stream(self.device))  # inputs come from the caller's stream
        with torch.cuda.stream(self.stream):
            for name, tensor in inputs.items():
                buffers[name].copy_(tensor, non_blocking=True)
            if not is_fixed(self.profiles[index]):
                self._enqueue(context)
            elif key in self.graphs:
                self.graphs[key].replay()
            else:
                self._enqueue(context)  # warm-up run before capture
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=self.stream):
                    self._enqueue(context)
                self.graphs[key] = graph
                graph.replay()
            result = buffers[self.output].clone()
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        return result


class TensorRTBackend:
    """Text encoder, UNet and VAE decoder engines of an engine directory, on one CUDA stream and one memory block."""

    name = "tensorrt"

    def __init__(self, engine_dir: EngineDir, device: str | None = None, precision: str | None = None):
        trt = import_tensorrt()
        self.device = torch.device(device or "cuda")
        if self.device.type != "cuda":
            raise UserError(f"the tensorrt backend runs on a CUDA device, not {self.device}")
        torch.cuda.set_device(self.device)  # contexts, buffers and graphs all belong to this device
        capability = compute_capability(self.device)
        precision = precision or engine_dir.export_settings.dtype
        self.info = engine_dir.info
        self.stream = torch.cuda.Stream(self.device)
        self.engines = {}
        for component in COMPONENTS:
            record = select_engine(engine_dir, component, trt.__version__, capability, precision)
            self.engines[component] = TrtEngine(load_plan(engine_dir, record), record, self.device, self.stream)
        size = max(engine.device_memory_size for engine in self.engines.values())
        self.workspace = torch.empty(max(size, 1), dtype=torch.uint8, device=self.device)
        for engine in self.engines.values():
            engine.use_device_memory(self.workspace)
        self.dtype = self.engines["unet"].torch_dtype("sample")
        self.timesteps = DeviceScalars(self.device)

    @property
    def placement(self) -> dict[str, Any]:
        return {"device": str(self.device)}

    def check_unet_shapes(self, calls: list[dict[str, tuple[int, ...]]]) -> None:
        """Refuse, before denoising starts, a generation whose UNet calls some profile does not admit (the pipeline
        passes every shape it will send), rather than failing after the first frames were computed."""
        for shapes in calls:
            check_in_profiles("unet", shapes, self.engines["unet"].profiles)

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.engines["text_encoder"](input_ids=input_ids.to(self.device, torch.int64))

    def predict_noise(
        self, sample: torch.Tensor, timestep: torch.Tensor, text_embeddings: torch.Tensor
    ) -> torch.Tensor:
        return self.engines["unet"](
            sample=sample, timestep=self.timesteps.get(timestep), encoder_hidden_states=text_embeddings
        )

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return self.engines["vae_decoder"](latents=latents)
