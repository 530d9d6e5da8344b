"""TensorRT: run the engines built from the exported ONNX files behind the backend protocol.

Split as in NVIDIA's TensorRT diffusion demo: building is `export.tensorrt_build` (ONNX -> engine, strongly typed,
with optimisation profiles from `t2v_fast.core.profiles` and a timing cache), `TrtEngine` (one engine, one execution
context per profile, named I/O bound to device buffers, CUDA graphs per shape for fixed-shape profiles) and
`TensorRTBackend` (an engine per network of the export: three for text to video, four for video editing with its VAE
encoder, two more with fast mode's, one more with guided video's `unet_controlnet`, on one CUDA stream, sharing one
block of device memory).
Engines are recorded in `engine.json`; loading refuses an engine whose ONNX or model hash, TensorRT version, GPU or
precision does not match.

Precision is carried by the ONNX file (`t2v-fast export --dtype fp16`) and the network is built strongly typed, as
NVIDIA's demo does: TensorRT 11 removed the weakly typed fp16/bf16 builder flags, so this works on 10.x and 11.x.

Written against the documented `tensorrt` (10.x/11.x) and Polygraphy (0.49+) APIs. CI has neither TensorRT nor a GPU,
so this path is not exercised there: its GPU tests skip, saying why; everything that needs no GPU (profiles, engine
selection, locking) is tested on the CPU.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

import torch

from t2v_fast.backends.torch import DeviceScalars
from t2v_fast.core.engine_dir import EngineDir, EngineRecord
from t2v_fast.core.networks import NETWORKS
from t2v_fast.core.profiles import check_in_profiles, is_fixed
from t2v_fast.errors import UserError

# Engines carry the precision of the ONNX they were built from (strongly typed networks).
PRECISIONS = {"fp32": "fp32", "fp16": "fp16"}
INSTALL_HINT = "TensorRT is not installed: pip install 't2v-fast[tensorrt]' on a machine with an NVIDIA GPU"


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
        # Returned in the network table's order (the backend unpacks them by position, as ONNX Runtime's).
        self.outputs = NETWORKS[record.component].output_names
        built = {n for n in self.names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT}
        if built != set(self.outputs):
            raise UserError(f"{record.file} has outputs {sorted(built)}, not {self.outputs}; rebuild it")
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

    def __call__(self, **inputs: torch.Tensor) -> list[torch.Tensor]:
        """The engine's outputs for these inputs, in the network table's order (copies: the buffers are reused)."""
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
            results = [buffers[name].clone() for name in self.outputs]
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        return results


class TensorRTBackend:
    """Text encoder, UNet and VAE decoder engines of an engine directory (and video editing's VAE encoder), on one
    CUDA stream and one memory block.

    With an export's fast graphs (`t2v-fast export --fast`), fast mode runs two engines more, `unet_caching` and
    `unet_cached`, rather than one engine for both steps: an engine runs its whole network on every enqueue, so a
    single one would compute the deep branch on the cached steps too, unless it chose its path with a conditional
    layer, which the exported graphs do not have (torch.export traces one path) and across which TensorRT does not
    fuse. The two steps' inputs and outputs differ as well (the feature is the full step's output and the cached
    step's input). As separate engines each is built, profiled and recorded like the others, checked for staleness
    against its own ONNX file, and the exact path's `unet` engine stays as it is. They share the memory block (they run
    one at a time); the weights they hold are their own (the caching engine a full copy of the UNet's).
    """

    name = "tensorrt"

    def __init__(self, engine_dir: EngineDir, device: str | None = None, precision: str | None = None):
        trt = import_tensorrt()
        self.device = torch.device(device or "cuda")
        if self.device.type != "cuda":
            raise UserError(f"the tensorrt backend runs on a CUDA device, not {self.device}")
        torch.cuda.set_device(self.device)  # contexts, buffers and graphs all belong to this device
        capability = compute_capability(self.device)
        precision = precision or engine_dir.export_settings.dtype
        self.card = engine_dir.card
        self.engine_dir = engine_dir
        self.stream = torch.cuda.Stream(self.device)
        self.engines = {}
        for component in engine_dir.networks:
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
        return self.engines["text_encoder"](input_ids=input_ids.to(self.device, torch.int64))[0]

    def predict_noise(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        return self.engines["unet"](
            sample=sample, timestep=self.timesteps.get(timestep), encoder_hidden_states=encoder_hidden_states
        )[0]

    def check_fast_mode(self, branch: int) -> None:
        """Refuse a fast-mode request these engines cannot run (an export without fast mode's graphs, another
        branch)."""
        self.engine_dir.check_fast_mode(branch)

    def predict_noise_caching(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor, branch: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fast mode's first call of every denoising loop: a request these engines cannot run is refused here,
        before any UNet work. The feature stays a tensor on the GPU."""
        self.check_fast_mode(branch)
        noise, feature = self.engines["unet_caching"](
            sample=sample, timestep=self.timesteps.get(timestep), encoder_hidden_states=encoder_hidden_states
        )
        return noise, feature

    def predict_noise_cached(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        feature: torch.Tensor,
        branch: int,
    ) -> torch.Tensor:
        """Checked by `predict_noise_caching`, the full step that starts every loop and made `feature`."""
        return self.engines["unet_cached"](
            sample=sample,
            timestep=self.timesteps.get(timestep),
            encoder_hidden_states=encoder_hidden_states,
            feature=feature,
        )[0]

    def predict_noise_guided(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        control: torch.Tensor,
        controlnet_scale: torch.Tensor,
    ) -> torch.Tensor:
        """Guided video's step on the `unet_controlnet` engine (ControlNet and UNet in one); an export without a
        ControlNet is refused, saying how to make one with it."""
        if "unet_controlnet" not in self.engines:
            self.engine_dir.check_guided()
        return self.engines["unet_controlnet"](
            sample=sample,
            timestep=self.timesteps.get(timestep),
            encoder_hidden_states=encoder_hidden_states,
            control=control,
            controlnet_scale=controlnet_scale,
        )[0]

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return self.engines["vae_decoder"](latents=latents)[0]

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Video editing's input frames through the `vae_encoder` engine (built for exports whose task has it)."""
        return self.engines["vae_encoder"](images=images)[0]
