"""Annotators: an input video's frames turned into ControlNet control maps, for guided video.

Guided video runs a ControlNet over Text2Video-Zero (as Picsart's Text2Video-Zero app does): the motion and layout come
from an input video, the look from the prompt. The ControlNet does not see the video itself but one control map per
frame, of the kind it was trained on; an annotator makes them:

- `"canny"`: OpenCV's Canny edge map, for the edge-guided ControlNet (the original app's thresholds, 100 and 200, are
  the defaults). The RGB frame goes to `cv2.Canny` directly, as diffusers' ControlNet docs do: on a colour image OpenCV
  takes, at each pixel, the channel with the strongest gradient, so edges between colours of equal brightness are kept
  that a grayscale conversion would lose.
- `"depth"`: MiDaS DPT-Hybrid (`Intel/dpt-hybrid-midas`, through transformers' `DPTForDepthEstimation`), for the
  depth-guided ControlNet. The predicted relative depth is interpolated back to the frame size (bicubic, as
  transformers' depth-estimation pipeline does) and scaled to 0..255 with one minimum and one maximum for the whole
  video: MiDaS depth is relative, and scaling each frame by its own range makes the same surface brighten and darken
  from frame to frame as other things enter and leave the view, which the generated video shows as flicker.
  `depth_per_frame=True` scales each frame by its own range (ControlNet's own annotator does that for single images).
- `"none"`: the frames already are the control maps (e.g. rendered OpenPose skeletons, the original app's pose mode).

Every map is uint8 RGB of the input's size, the gray value repeated in the 3 channels the ControlNets take.

The depth model is a preset with deterministic random weights (`DEPTH_PRESETS`: the real architecture, or a tiny one for
tests), a local folder (`save_depth_estimator` writes one) or a hub id. It is loaded once per process and device.
"""

from __future__ import annotations

import functools
import numbers
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from t2v_fast.errors import NumericalError, UserError

if TYPE_CHECKING:  # imported where used: listing the annotators and presets loads neither torch nor OpenCV
    import torch
    from transformers import DPTForDepthEstimation
    from transformers.image_processing_utils import BaseImageProcessor

ANNOTATORS = ("canny", "depth", "none")
DEFAULT_DEPTH_MODEL = "Intel/dpt-hybrid-midas"
# Frames per forward pass of the depth model: enough to keep a GPU busy, little memory at 384×384.
DEPTH_BATCH_SIZE = 8

# Intel/dpt-hybrid-midas as it is published: a ViT-B/16 over the features of a BiT (ResNet-50-like) backbone, 384×384.
# From transformers' conversion script for it (`convert_dpt_hybrid_to_pytorch.py`, the "midas" settings), the BiT
# backbone of its config.json (as copied into stable-diffusion-2-depth's depth_estimator/config.json) and DPTConfig's
# defaults for the rest.
DPT_HYBRID_MIDAS_CONFIG: dict[str, Any] = {
    "is_hybrid": True,
    "image_size": 384,
    "patch_size": 16,
    "num_channels": 3,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-12,
    "qkv_bias": True,
    "backbone_config": {
        "model_type": "bit",
        "layer_type": "bottleneck",
        "global_padding": "SAME",
        "embedding_dynamic_padding": True,
        "embedding_size": 64,
        "hidden_sizes": [256, 512, 1024, 2048],
        "depths": [3, 4, 9],
        "num_groups": 32,
        "hidden_act": "relu",
        "out_features": ["stage1", "stage2", "stage3"],
    },
    # BiT's stage 3 (1024 channels, 1/16 of 384); stages 1 and 2 feed the first two neck levels directly.
    "backbone_featmap_shape": [1, 1024, 24, 24],
    "backbone_out_indices": [2, 5, 8, 11],
    "readout_type": "project",
    "reassemble_factors": [1, 1, 1, 0.5],
    "neck_hidden_sizes": [256, 512, 768, 768],
    "neck_ignore_stages": [0, 1],
    "fusion_hidden_size": 256,
    "use_batch_norm_in_fusion_residual": False,
    "head_in_index": -1,
    "add_projection": False,
}

# The same architecture (hybrid BiT + ViT, project readout) at widths and depths that run in milliseconds on a CPU. The
# first two neck sizes must equal BiT's stage 1 and 2 widths, the featmap's channels its stage 3 width.
DPT_TINY_CONFIG: dict[str, Any] = {
    **DPT_HYBRID_MIDAS_CONFIG,
    "image_size": 64,
    "hidden_size": 32,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "backbone_config": {
        **DPT_HYBRID_MIDAS_CONFIG["backbone_config"],
        "embedding_size": 16,
        "hidden_sizes": [16, 32, 64, 128],
        "depths": [1, 1, 1],
        "num_groups": 4,
    },
    "backbone_featmap_shape": [1, 64, 4, 4],
    "backbone_out_indices": [0, 1, 2, 3],
    "neck_hidden_sizes": [16, 32, 32, 32],
    "fusion_hidden_size": 16,
}

# Intel/dpt-hybrid-midas's preprocessor_config.json: a plain bilinear resize to 384×384 (the aspect ratio is not kept)
# and pixels scaled to [-1, 1].
DPT_HYBRID_MIDAS_PROCESSOR: dict[str, Any] = {
    "do_resize": True,
    "size": {"height": 384, "width": 384},
    "resample": 2,  # PIL's BILINEAR
    "keep_aspect_ratio": False,
    "ensure_multiple_of": 1,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "do_pad": False,
}

DEPTH_PRESETS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "dpt-hybrid-random": (DPT_HYBRID_MIDAS_CONFIG, DPT_HYBRID_MIDAS_PROCESSOR),
    "dpt-tiny-random": (DPT_TINY_CONFIG, {**DPT_HYBRID_MIDAS_PROCESSOR, "size": {"height": 64, "width": 64}}),
}

HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


@dataclass(frozen=True)
class DepthEstimator:
    """A depth model in eval mode on `device`, with the image processor its inputs are prepared by."""

    model: DPTForDepthEstimation
    processor: BaseImageProcessor
    device: torch.device


def _resolve_device(device: str | torch.device | None) -> torch.device:
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise UserError(f"invalid device {device!r}: {error}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {str(device)!r} requested but CUDA is not available on this machine")
    return resolved


def _processor_class() -> Any:
    """transformers' DPT image processor: its default (torchvision) backend, or the PIL one that transformers itself
    falls back to, with a warning, without torchvision."""
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        from transformers import DPTImageProcessor

        return DPTImageProcessor
    from transformers import DPTImageProcessorPil

    return DPTImageProcessorPil


def _build_preset(name: str, seed: int = 0) -> tuple[DPTForDepthEstimation, BaseImageProcessor]:
    import torch
    from transformers import DPTConfig, DPTForDepthEstimation

    config, processor_settings = DEPTH_PRESETS[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DPTForDepthEstimation(DPTConfig(**config))
    processor: BaseImageProcessor = _processor_class()(**processor_settings)
    return model, processor


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _load_pretrained(model: str) -> tuple[DPTForDepthEstimation, BaseImageProcessor]:
    from transformers import DPTForDepthEstimation

    folder = Path(model).expanduser()
    if folder.is_dir():
        try:
            return (
                DPTForDepthEstimation.from_pretrained(folder, local_files_only=True),
                _processor_class().from_pretrained(folder, local_files_only=True),
            )
        except (OSError, ValueError) as error:
            raise UserError(f"cannot load depth model from {folder}: {_first_line(error)}") from None
    if folder.exists() or not HUB_ID.fullmatch(model) or model.startswith("."):
        raise UserError(
            f"depth model {model!r} is not a preset ({', '.join(DEPTH_PRESETS)}), an existing folder, "
            "or a hub id (org/name)"
        )
    try:
        return DPTForDepthEstimation.from_pretrained(model), _processor_class().from_pretrained(model)
    except Exception as error:  # the hub client raises many types: network, auth, missing repo
        raise UserError(f"cannot fetch depth model {model!r} from the hub: {_first_line(error)}") from None


@functools.lru_cache(maxsize=4)
def _load_cached(model: str, device: torch.device) -> DepthEstimator:
    network, processor = _build_preset(model) if model in DEPTH_PRESETS else _load_pretrained(model)
    # transformers declares `to` with `functools.wraps(torch.nn.Module.to)`, which mypy reads as an unbound method.
    network.to(device)  # type: ignore[arg-type]
    network.eval().requires_grad_(False)
    return DepthEstimator(model=network, processor=processor, device=device)


def load_depth_estimator(model: str | os.PathLike[str], device: str | torch.device | None = None) -> DepthEstimator:
    """The depth model `model` (a preset of `DEPTH_PRESETS`, a local folder or a hub id) on `device` (default: the GPU
    if there is one), in float32. Loaded once per model and device: later calls return the same object."""
    name = os.fspath(model)
    if name not in DEPTH_PRESETS and Path(name).expanduser().is_dir():
        name = str(Path(name).expanduser().resolve())  # one cache entry however the folder is spelled
    return _load_cached(name, _resolve_device(device))


def clear_depth_cache() -> None:
    """Forget the loaded depth models (their memory is freed once nothing else holds them)."""
    _load_cached.cache_clear()


def save_depth_estimator(name: str, folder: str | os.PathLike[str]) -> Path:
    """Write the depth model `name` (a preset, usually) to `folder`, which then loads with
    `DPTForDepthEstimation.from_pretrained` and `DPTImageProcessor.from_pretrained`, or `load_depth_estimator`."""
    model, processor = _build_preset(name) if name in DEPTH_PRESETS else _load_pretrained(name)
    target = Path(folder).expanduser()
    try:
        target.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(target)
        processor.save_pretrained(target)
    except OSError as error:
        raise UserError(f"cannot write depth model to {target}: {error}") from None
    return target


def _threshold(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= int(value) <= 255:
        raise UserError(f"{name} must be an integer in [0, 255], got {value!r}")
    return int(value)


def _check_frames(frames: object) -> np.ndarray:
    if not isinstance(frames, np.ndarray):
        raise UserError(f"frames must be a numpy uint8 array of shape (F, H, W, 3), got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise UserError(f"frames must be uint8 (F, H, W, 3), got dtype {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
        raise UserError(f"frames must be uint8 (F, H, W, 3) with at least one frame, got shape {frames.shape}")
    return frames


def _progress(total: int, enabled: bool, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="frame")


def canny(frames: np.ndarray, low: int = 100, high: int = 200, *, progress: bool = False) -> np.ndarray:
    """`cv2.Canny(frame, low, high)` of each RGB frame, repeated to 3 channels: (F, H, W, 3) uint8, edges 255."""
    import cv2

    edges = np.empty(frames.shape[:3], dtype=np.uint8)
    with _progress(len(frames), progress, "canny") as bar:
        for i, frame in enumerate(frames):
            edges[i] = cv2.Canny(np.ascontiguousarray(frame), low, high)
            bar.update(1)
    return np.repeat(edges[..., None], 3, axis=-1)


def predict_depth(
    frames: np.ndarray, estimator: DepthEstimator, *, batch_size: int = DEPTH_BATCH_SIZE, progress: bool = False
) -> np.ndarray:
    """The model's relative depth (larger is nearer, for MiDaS) of each frame at the frame's size: (F, H, W) float32."""
    import torch

    height, width = frames.shape[1:3]
    dtype = next(estimator.model.parameters()).dtype
    depths = np.empty(frames.shape[:3], dtype=np.float32)
    with torch.inference_mode(), _progress(len(frames), progress, "depth") as bar:
        for start in range(0, len(frames), batch_size):
            chunk = frames[start : start + batch_size]
            inputs = estimator.processor(images=list(chunk), return_tensors="pt", input_data_format="channels_last")
            pixel_values = inputs["pixel_values"].to(estimator.device, dtype)
            predicted = estimator.model(pixel_values=pixel_values).predicted_depth
            resized = torch.nn.functional.interpolate(
                predicted.unsqueeze(1).float(), size=(height, width), mode="bicubic", align_corners=False
            )
            depths[start : start + len(chunk)] = resized.squeeze(1).cpu().numpy()
            bar.update(len(chunk))
    if not np.isfinite(depths).all():
        raise NumericalError("the depth model produced NaN or Inf depth")
    return depths


def depth_to_uint8(depth: np.ndarray, *, per_frame: bool = False) -> np.ndarray:
    """(F, H, W) depth scaled to 0..255 by one min/max over the whole video (or each frame's own), rounded, repeated
    to 3 channels. A constant range (nothing to tell apart) maps to 0."""
    axes = (1, 2) if per_frame else None
    low = depth.min(axis=axes, keepdims=True)
    span = depth.max(axis=axes, keepdims=True) - low
    scaled = (depth - low) / np.where(span > 0, span, 1) * 255
    maps = np.rint(scaled).clip(0, 255).astype(np.uint8)
    return np.repeat(maps[..., None], 3, axis=-1)


def annotate(
    frames: np.ndarray,
    annotator: str,
    *,
    canny_low: int = 100,
    canny_high: int = 200,
    depth_model: str = DEFAULT_DEPTH_MODEL,
    depth_per_frame: bool = False,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> np.ndarray:
    """The control maps of uint8 RGB `frames` (F, H, W, 3) for `annotator` (one of `ANNOTATORS`): uint8 (F, H, W, 3).

    The Canny thresholds are checked whatever the annotator, so that a bad value is reported where it is set."""
    if annotator not in ANNOTATORS:
        raise UserError(f"unknown annotator {annotator!r}; choose one of: {', '.join(ANNOTATORS)}")
    low, high = _threshold("canny_low", canny_low), _threshold("canny_high", canny_high)
    if low > high:
        raise UserError(f"canny_low ({low}) must not exceed canny_high ({high})")
    frames = _check_frames(frames)
    runners: dict[str, Callable[[], np.ndarray]] = {
        "canny": lambda: canny(frames, low, high, progress=progress),
        "depth": lambda: depth_to_uint8(
            predict_depth(frames, load_depth_estimator(depth_model, device), progress=progress),
            per_frame=depth_per_frame,
        ),
        "none": lambda: frames.copy(),
    }
    return runners[annotator]()
