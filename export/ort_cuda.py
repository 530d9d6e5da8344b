"""ONNX Runtime's own fp16 path for its CUDA provider: fuse the fp32 graph, then convert it to fp16.

ONNX Runtime's Stable Diffusion tools (`onnxruntime.transformers.models.stable_diffusion`) optimise the fp32 export
and convert afterwards, because their fusions (attention, GroupNorm, SkipLayerNorm, NhwcConv) match fp32 patterns:
an fp16 export loses most of them. The fused graphs hold contrib operators (GroupNorm, NhwcConv) that only the CUDA
provider runs, so they are for that provider alone. What fused can be seen on the CPU (`fused_operators`); whether
the result is faster only on a GPU.
"""

from __future__ import annotations

from pathlib import Path

# The optimiser's model type per component, as ONNX Runtime's Stable Diffusion tools name them.
# Fast mode's graphs are parts of the UNet, made of its blocks; video editing's VAE encoder is a "vae" there too.
ORT_MODEL_TYPES = {
    "text_encoder": "clip",
    "unet": "unet",
    "vae_decoder": "vae",
    "vae_encoder": "vae",
    "unet_caching": "unet",
    "unet_cached": "unet",
}


def optimize_for_cuda(source: Path, target: Path, component: str, float16: bool = True) -> dict[str, int]:
    """Fuse `source` (an fp32 ONNX file of `component`) as ONNX Runtime's Stable Diffusion tools do, convert it to
    fp16 when asked, and write it to `target`; returns the count of each fused operator (0: the pattern was not
    found)."""
    import onnx
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    kind = ORT_MODEL_TYPES[component]
    model = optimize_model(
        str(source),
        model_type=kind,
        num_heads=0,  # deduced from the graph
        hidden_size=0,
        opt_level=0,  # graph fusions only: no ONNX Runtime session (that would need the CUDA provider)
        optimization_options=FusionOptions(kind),
        use_gpu=True,
    )
    fused = {name: int(count) for name, count in model.get_fused_operator_statistics().items()}
    if float16:
        model.convert_float_to_float16(keep_io_types=False)
    size = model.model.ByteSize()
    model.save_model_to_file(str(target), use_external_data_format=size <= 0 or size >= onnx.checker.MAXIMUM_PROTOBUF)
    return fused
