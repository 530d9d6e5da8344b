"""t2v-fast: text-to-video generation (Text2Video-Zero and ModelScope) over PyTorch, ONNX Runtime and TensorRT.

The public names are imported on first use (PEP 562), so `import t2v_fast` and the command line's `--help` do not
pay for importing torch, diffusers and transformers.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from t2v_fast._version import __version__
from t2v_fast.errors import NumericalError, T2vFastError, UserError

if TYPE_CHECKING:
    from t2v_fast.core.pipeline import VideoPipeline
    from t2v_fast.core.video import Video
    from t2v_fast.families.modelscope.pipeline import ModelScopePipeline
    from t2v_fast.families.text2video_zero.pipeline import TextToVideoZeroPipeline
    from t2v_fast.loading import load_pipeline

_LAZY = {
    "load_pipeline": "t2v_fast.loading",
    "TextToVideoZeroPipeline": "t2v_fast.families.text2video_zero.pipeline",
    "ModelScopePipeline": "t2v_fast.families.modelscope.pipeline",
    "VideoPipeline": "t2v_fast.core.pipeline",
    "Video": "t2v_fast.core.video",
}

__all__ = [
    "ModelScopePipeline",
    "NumericalError",
    "T2vFastError",
    "TextToVideoZeroPipeline",
    "UserError",
    "Video",
    "VideoPipeline",
    "__version__",
    "load_pipeline",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
