"""The ONNX Runtime backend: the exported graphs, tensors bound in place on the execution provider's device."""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from t2v_fast.backends.torch import DeviceScalars
from t2v_fast.core.engine_dir import EngineDir
from t2v_fast.core.networks import NETWORKS
from t2v_fast.core.profiles import default_ranges
from t2v_fast.errors import UserError

ORT_PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
# What ONNX Runtime's TensorRT provider links (onnxruntime-gpu 1.31 is built against TensorRT 10).
TENSORRT_LIBRARY = "libnvinfer.so.10"

logger = logging.getLogger("t2v_fast")


def tensorrt_libraries_load() -> bool:
    """Whether TensorRT's runtime library loads in this process; the GPU wheel lists its TensorRT provider whether
    or not TensorRT is installed, and a session asking for it then fails or falls back noisily."""
    try:
        ctypes.CDLL(TENSORRT_LIBRARY)
    except OSError:
        return False
    return True


def choose_providers(
    available: list[str], requested: list[str] | None = None, tensorrt_loads: Callable[[], bool] | None = None
) -> tuple[list[str], str]:
    """Execution providers to use and a sentence saying why: the requested ones (all must be available), else the
    preferred available ones, TensorRT's only where its libraries load (else the CUDA provider leads)."""
    if requested:
        missing = [p for p in requested if p not in available]
        if missing:
            raise UserError(
                f"onnxruntime providers not available here: {', '.join(missing)}; available: {', '.join(available)}"
            )
        return list(requested), f"requested: {', '.join(requested)}"
    chosen = [p for p in ORT_PROVIDER_PREFERENCE if p in available]
    if "TensorrtExecutionProvider" in chosen and not (tensorrt_loads or tensorrt_libraries_load)():
        chosen.remove("TensorrtExecutionProvider")
        return chosen, f"{chosen[0]}: this build lists TensorrtExecutionProvider, but {TENSORRT_LIBRARY} does not load"
    return chosen, f"{chosen[0]}: the first of {', '.join(ORT_PROVIDER_PREFERENCE)} this build has"


def onnxruntime_providers(requested: list[str] | None = None) -> list[str]:
    """Execution providers in order of preference among those this onnxruntime build has, or the requested ones."""
    import onnxruntime as ort

    providers, reason = choose_providers(ort.get_available_providers(), requested)
    logger.info("onnxruntime providers: %s", reason)
    return providers


GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
NUMPY_DTYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64}


def provider_options(engine_dir: EngineDir, component: str, provider: str, device_id: int) -> dict[str, str]:
    """Options of one execution provider for one component's session.

    TensorRT: the precision of the export, engines and timing cache kept in the engine folder (built once, not per
    process), and the component's profile (frames 1 included) from `t2v_fast.core.profiles.default_ranges`.
    """
    if provider == "CUDAExecutionProvider":
        # As ONNX Runtime's own Stable Diffusion helpers (`CudaSession.get_cuda_provider_options`): an arena that
        # grows by what is asked, not to the next power of two (GiBs on a full-size UNet); the exhaustive cuDNN
        # convolution search, with the workspace it needs, paid once per shape.
        return {
            "device_id": str(device_id),
            "arena_extend_strategy": "kSameAsRequested",
            "cudnn_conv_algo_search": "EXHAUSTIVE",
            "cudnn_conv_use_max_workspace": "1",
        }
    if provider != "TensorrtExecutionProvider":
        return {}
    cache = engine_dir.path / "onnxruntime-trt-cache"
    profile = default_ranges(engine_dir, static=False).profiles(engine_dir.card)[component][0]
    shapes = [
        ",".join(f"{name}:{'x'.join(map(str, limits[point]))}" for name, limits in profile.items() if limits[point])
        for point in range(3)
    ]
    return {
        "device_id": str(device_id),
        "trt_fp16_enable": str(engine_dir.export_settings.dtype == "fp16"),
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(cache),
        "trt_profile_min_shapes": shapes[0],
        "trt_profile_opt_shapes": shapes[1],
        "trt_profile_max_shapes": shapes[2],
    }


class OnnxRuntimeBackend:
    """Runs the exported ONNX graphs with ONNX Runtime, tensors bound in place (IOBinding) on the provider's device.

    On a GPU provider the pipeline's tensors stay on the GPU: inputs and outputs are torch CUDA tensors bound by
    address, never copied through host memory. With `cuda_graph` (CUDA provider), each UNet shape is captured once
    into a CUDA graph (ONNX Runtime's `gpu_graph_id`) over buffers that stay bound, and replayed. An export with fast
    mode's graphs (`t2v-fast export --fast`) runs fast mode's steps on `unet_caching` and `unet_cached`, the feature
    between them a tensor on the provider's device like the latents; one with a ControlNet (`t2v-fast export
    --controlnet`) runs guided video's steps on `unet_controlnet`, the control maps bound in place too.
    """

    name = "onnxruntime"

    def __init__(
        self,
        engine_dir: EngineDir,
        providers: list[str] | None = None,
        device: str | None = None,
        cuda_graph: bool = False,
    ):
        import onnxruntime as ort

        self.card = engine_dir.card
        requested, self.provider_choice = choose_providers(ort.get_available_providers(), providers)
        logger.info("onnxruntime providers: %s", self.provider_choice)
        on_gpu = requested[0] in GPU_PROVIDERS
        engine_dir.check_runs_on("onnxruntime-cuda" if requested[0] == "CUDAExecutionProvider" else "onnxruntime-cpu")
        self.device = torch.device(device or ("cuda" if on_gpu else "cpu"))
        if on_gpu != (self.device.type == "cuda"):
            raise UserError(f"device {self.device} does not match the execution provider {requested[0]}")
        device_id = (self.device.index or 0) if on_gpu else 0
        self.dtype = {"float32": torch.float32, "float16": torch.float16}[
            engine_dir.component("unet").input_dtype("sample")
        ]
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if cuda_graph and requested[0] != "CUDAExecutionProvider":
            raise UserError(f"CUDA graphs need ONNX Runtime's CUDAExecutionProvider first, not {requested[0]}")
        self.cuda_graph = cuda_graph
        # ONNX Runtime computes on torch's current stream, as its own Stable Diffusion helpers do, so that reading
        # the inputs waits for the torch kernels that wrote them; `_run_bound` also covers a later change of stream.
        self.stream = torch.cuda.current_stream(self.device) if on_gpu else None
        self.engine_dir = engine_dir
        self.sessions = {}
        for name in engine_dir.networks:
            chosen = [(p, provider_options(engine_dir, name, p, device_id)) for p in requested]
            if self.stream is not None and requested[0] == "CUDAExecutionProvider":
                chosen[0][1]["user_compute_stream"] = str(self.stream.cuda_stream)
            if name == "unet" and self.cuda_graph:
                chosen[0][1]["enable_cuda_graph"] = "1"
            self.sessions[name] = ort.InferenceSession(str(engine_dir.onnx_path(name)), options, providers=chosen)
        self.timesteps = DeviceScalars(self.device)
        # UNet shape -> (graph id, binding, input buffers, output buffers), for `cuda_graph`
        self.graphs: dict[tuple, tuple[int, Any, dict[str, torch.Tensor], list[torch.Tensor]]] = {}

    @property
    def placement(self) -> dict[str, Any]:
        providers = self.sessions["unet"].get_providers()  # what the session really took, after any fallback
        return {"device": str(self.device), "providers": providers, "provider_choice": self.provider_choice}

    def _bind(self, binding: Any, name: str, tensor: torch.Tensor, output: bool = False) -> None:
        device = self.device.type if self.device.type == "cpu" else "cuda"
        arguments = (name, device, self.device.index or 0, NUMPY_DTYPES[tensor.dtype], tuple(tensor.shape))
        (binding.bind_output if output else binding.bind_input)(*arguments, tensor.data_ptr())

    def _bound(
        self, component: str, inputs: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]]
    ) -> tuple[Any, list[torch.Tensor]]:
        """A binding of `inputs` in place and of new output tensors of the shapes the network table gives."""
        network = NETWORKS[component]
        binding = self.sessions[component].io_binding()
        for name, tensor in inputs.items():
            self._bind(binding, name, tensor)
        outputs = []
        for spec, shape in zip(network.outputs, network.output_shapes(shapes, self.card), strict=True):
            outputs.append(torch.empty(shape, dtype=self.dtype, device=self.device))
            self._bind(binding, spec.name, outputs[-1], output=True)
        return binding, outputs

    def _run(self, component: str, **inputs: torch.Tensor) -> list[torch.Tensor]:
        """The network's outputs, in the order of the network table."""
        inputs = {name: tensor.to(self.device).contiguous() for name, tensor in inputs.items()}
        shapes = {name: tuple(tensor.shape) for name, tensor in inputs.items()}
        if component == "unet" and self.cuda_graph:
            return self._replay(shapes, inputs)
        binding, outputs = self._bound(component, inputs, shapes)
        self._run_bound(component, binding)
        return outputs

    def _run_bound(self, component: str, binding: Any, run_options: Any = None) -> None:
        """Run with bound tensors in stream order: the inputs torch wrote (or copied into a CUDA graph's buffers)
        are complete before ONNX Runtime reads them, and its outputs before torch reads them. Sessions compute on
        the torch stream current at construction; if the caller has switched streams since, that stream is waited
        for. Then `synchronize_inputs`/`synchronize_outputs`, as ONNX Runtime's `CudaSession.infer` does."""
        if self.stream is not None and torch.cuda.current_stream(self.device) != self.stream:
            torch.cuda.current_stream(self.device).synchronize()
        binding.synchronize_inputs()
        self.sessions[component].run_with_iobinding(binding, run_options)
        binding.synchronize_outputs()

    def _replay(self, shapes: dict[str, tuple[int, ...]], inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """One CUDA graph per UNet shape: the first run at a shape captures it, later runs copy inputs and replay."""
        import onnxruntime as ort

        key = tuple(sorted(shapes.items()))
        if key not in self.graphs:
            buffers = {name: torch.empty_like(tensor) for name, tensor in inputs.items()}
            binding, outputs = self._bound("unet", buffers, shapes)
            self.graphs[key] = (len(self.graphs) + 1, binding, buffers, outputs)
        graph_id, binding, buffers, outputs = self.graphs[key]
        for name, tensor in inputs.items():
            buffers[name].copy_(tensor)
        run_options = ort.RunOptions()
        run_options.add_run_config_entry("gpu_graph_id", str(graph_id))
        self._run_bound("unet", binding, run_options)
        return [output.clone() for output in outputs]

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self._run("text_encoder", input_ids=input_ids.long())[0]

    def predict_noise(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        timestep = self.timesteps.get(timestep)
        return self._run("unet", sample=sample, timestep=timestep, encoder_hidden_states=encoder_hidden_states)[0]

    def check_fast_mode(self, branch: int) -> None:
        """Refuse a fast-mode request these sessions cannot run: fast mode runs the exported fast graphs (for one
        branch), and CUDA graphs are captured for the exact path's UNet only."""
        self.engine_dir.check_fast_mode(branch)
        if self.cuda_graph:
            raise UserError(
                "fast mode (cache_interval > 1) does not run with --cuda-graph, whose graphs replay the exact path's"
                " UNet only; drop one of the two"
            )

    def predict_noise_caching(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor, branch: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The feature stays a tensor on the provider's device, bound in place again by `predict_noise_cached`.

        Fast mode's first call of every denoising loop: a request these graphs cannot run is refused here, before
        any UNet work."""
        self.check_fast_mode(branch)
        timestep = self.timesteps.get(timestep)
        noise, feature = self._run(
            "unet_caching", sample=sample, timestep=timestep, encoder_hidden_states=encoder_hidden_states
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
        timestep = self.timesteps.get(timestep)
        return self._run(
            "unet_cached",
            sample=sample,
            timestep=timestep,
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
        """Guided video's step on `unet_controlnet` (ControlNet and UNet in one graph), bound in place like the
        UNet's; an export without a ControlNet is refused, saying how to make one with it."""
        if "unet_controlnet" not in self.sessions:
            self.engine_dir.check_guided()
        timestep = self.timesteps.get(timestep)
        return self._run(
            "unet_controlnet",
            sample=sample,
            timestep=timestep,
            encoder_hidden_states=encoder_hidden_states,
            control=control.to(self.dtype),
            controlnet_scale=controlnet_scale.to(self.dtype),
        )[0]

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return self._run("vae_decoder", latents=latents)[0]

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Video editing's input frames through `vae_encoder`, bound in place like the decoder's latents."""
        return self._run("vae_encoder", images=images)[0]
