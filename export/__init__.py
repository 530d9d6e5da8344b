"""Export: PyTorch networks -> ONNX files and `engine.json`, the first of the export / build / run steps.

`t2v-fast export` is its command line and `t2v-fast build` that of `export.tensorrt_build` (TensorRT engines from these
files); running either is a backend's work (`t2v_fast.backends`).
"""

from t2v_fast.core.engine_dir import ExportSettings

from .exporter import EXPORT_DTYPES, export_model

__all__ = ["EXPORT_DTYPES", "ExportSettings", "export_model"]
