"""Export: PyTorch networks -> ONNX files and `engine.json`, the first of the export / build / run steps.

Installed as `t2v_fast.export`; `t2v-fast export` is its command line. Building TensorRT engines from these files is
`t2v_fast.tensorrt_backend`, running them is `t2v_fast.runtime`.
"""

from t2v_fast.engine_dir import ExportSettings

from .exporter import EXPORT_DTYPES, export_model

__all__ = ["EXPORT_DTYPES", "ExportSettings", "export_model"]
