"""Measuring primitives: synchronised timings with median/p90, peak memory, FLOP counts, the matmul ceiling, and the
pixel difference of two videos."""

from __future__ import annotations

import ctypes
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> dict[str, Any]:
    """Median and p90 of `repeats` synchronised runs after `warmup` unmeasured ones."""
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        fn()
        synchronize(device)
        runs.append(time.perf_counter() - started)
    ordered = sorted(runs)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return {"median_s": statistics.median(runs), "p90_s": p90, "runs_s": runs}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def make_rss_track_live_memory() -> None:
    """Have glibc return large freed blocks to the OS at once (a fixed mmap threshold), so RSS follows live memory
    instead of the allocator's high-water mark; without it, CPU peak-memory figures mostly measure fragmentation."""
    if platform.system() == "Linux":
        ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD


def _device_used_bytes(device: torch.device) -> int:
    """Memory in use on the whole GPU (cudaMemGetInfo, as NVML reports it): torch's allocator, and also what ONNX
    Runtime's arena, TensorRT's engines and the CUDA context hold, which `max_memory_allocated` never sees."""
    free, total = torch.cuda.mem_get_info(device)
    return total - free


class PeakMemory:
    """Peak memory during a block, sampled every 5 ms: on CUDA the device's used memory (`peak_bytes`) and torch's
    allocator peak (`allocator_peak_bytes`); on the CPU the process RSS."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_bytes = 0
        self.baseline_bytes = 0
        self.allocator_peak_bytes: int | None = None

    @contextmanager
    def track(self):
        on_cuda = self.device.type == "cuda"
        if on_cuda:
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        used = (lambda: _device_used_bytes(self.device)) if on_cuda else _rss_bytes
        self.baseline_bytes = self.peak_bytes = used()
        running = True

        def sample() -> None:
            while running:
                self.peak_bytes = max(self.peak_bytes, used())
                time.sleep(0.005)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            yield self
        finally:
            if on_cuda:
                synchronize(self.device)
            running = False
            sampler.join()
            self.peak_bytes = max(self.peak_bytes, used())
            if on_cuda:
                self.allocator_peak_bytes = torch.cuda.max_memory_allocated(self.device)


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call, counted by PyTorch's FlopCounterMode (matmuls, convolutions, attention)."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def matmul_ceiling(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """The chip's practical ceiling in this run: a large square matmul (8192³ on GPU, 2048³ on CPU)."""
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    timing = timed(lambda: a @ b, device, warmup=2, repeats=5 if device.type == "cuda" else 3)
    return {"n": n, "dtype": str(dtype).removeprefix("torch."), "tflops": 2 * n**3 / timing["median_s"] / 1e12}


def describe_machine(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        with open("/proc/cpuinfo") as handle:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
        with open("/proc/meminfo") as handle:
            info["memory_gib"] = round(int(handle.readline().split()[1]) / 2**20, 1)
    except (OSError, StopIteration):
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
    return info


def pixel_diff(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """The largest and the mean absolute difference of two uint8 videos, per pixel (0-255)."""
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return {"max": int(diff.max()), "mean": float(diff.mean())}
