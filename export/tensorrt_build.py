"""Building TensorRT engines from an engine directory's ONNX files (`t2v-fast build`).

As in NVIDIA's TensorRT diffusion demo: strongly typed networks (the ONNX carries the precision), one optimisation
profile set per network (`t2v_fast.core.profiles`), a timing cache per TensorRT version and GPU, and each engine
recorded in `engine.json` so that loading (`t2v_fast.backends.tensorrt`) refuses anything stale.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import torch

from t2v_fast.backends.tensorrt import compute_capability, engine_key, import_tensorrt
from t2v_fast.core.engine_dir import EngineDir, EngineRecord
from t2v_fast.core.profiles import BuildRanges
from t2v_fast.errors import UserError


def timing_cache_path(engine_dir: EngineDir, tensorrt_version: str, capability: str) -> Path:
    """Timing measurements are only valid for one TensorRT version on one GPU architecture."""
    return engine_dir.path / f"timing.trt{tensorrt_version}.sm{capability.replace('.', '')}.cache"


def build_engines(
    engine_dir: EngineDir,
    ranges: BuildRanges,
    precision: str | None = None,
    timing_cache: Path | None = None,
    progress: bool = True,
) -> list[str]:
    """Build one strongly typed engine per exported component (fast mode's two and guided video's `unet_controlnet`
    with them) with Polygraphy, record them in engine.json, return their keys.

    `precision` must be the export's (the ONNX file carries it); None takes it from the export."""
    engine_dir.check_runs_on("tensorrt")
    trt = import_tensorrt()
    from polygraphy.backend.trt import CreateConfig, Profile, engine_from_network, network_from_onnx_path, save_engine

    exported = engine_dir.export_settings.dtype
    precision = precision or exported
    if precision != exported:
        raise UserError(
            f"{engine_dir.path} was exported in {exported}, and engines take the precision of their ONNX files:"
            f" export again with --dtype {precision} to build {precision} engines"
        )
    capability = compute_capability()
    profiles = ranges.profiles(engine_dir.card)
    timing_cache = timing_cache or timing_cache_path(engine_dir, trt.__version__, capability)
    keys = []
    for component in engine_dir.networks:
        engine_dir.verify_onnx(component)
        key = engine_key(component, trt.__version__, capability, precision, ranges.is_static)
        trt_profiles = []
        for shapes in profiles[component]:
            profile = Profile()
            for name, (low, opt, high) in shapes.items():
                profile.add(name, min=low, opt=opt, max=high)
            trt_profiles.append(profile)
        started = time.perf_counter()
        network = network_from_onnx_path(str(engine_dir.onnx_path(component)), strongly_typed=True)
        config = CreateConfig(
            # fp32 engines are the accuracy reference (`t2v-fast check` holds them to fp32's 1e-4): TF32, on by
            # default in TensorRT, would round matmul and convolution inputs to 10-bit mantissas. fp16 is the fast path.
            tf32=False,
            profiles=trt_profiles,
            load_timing_cache=str(timing_cache) if timing_cache.exists() else None,
        )
        engine = engine_from_network(network, config=config, save_timing_cache=str(timing_cache))
        path = engine_dir.path / f"{key}.plan"
        save_engine(engine, str(path))
        record = EngineRecord(
            component=component,
            file=path.name,
            tensorrt_version=trt.__version__,
            compute_capability=capability,
            onnx_sha256=engine_dir.component(component).sha256,
            weights_sha256=engine_dir.weights_sha256,
            profiles=profiles[component],
            precision=precision,
            gpu=torch.cuda.get_device_name(),
            static=ranges.is_static,
            build_seconds=round(time.perf_counter() - started, 1),
            built_at=time.time(),
            sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
            bytes=path.stat().st_size,
        )
        engine_dir.record_engine(key, record)
        keys.append(key)
        if progress:
            print(f"built {record.file} in {record.build_seconds} s")
    return keys
