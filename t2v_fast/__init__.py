"""t2v-fast: Text2Video-Zero video generation with one pipeline loop over PyTorch, ONNX Runtime and TensorRT."""

__version__ = "0.1.0"

from .errors import NumericalError, UserError
from .pipeline import TextToVideoZeroPipeline, load_pipeline
from .video import Video

__all__ = ["NumericalError", "TextToVideoZeroPipeline", "UserError", "Video", "__version__", "load_pipeline"]
