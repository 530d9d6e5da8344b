"""Names the command line offers before anything heavy is imported: backends and dtypes."""

BACKENDS = ("torch", "onnxruntime", "tensorrt")
DTYPE_NAMES = ("float32", "float16", "bfloat16")
