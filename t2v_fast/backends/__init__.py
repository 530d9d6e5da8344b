"""The backends that run a model's networks behind `t2v_fast.runtime.ModelBackend`: PyTorch, ONNX Runtime, TensorRT."""
