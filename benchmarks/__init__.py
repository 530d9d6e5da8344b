"""Benchmark harness: every backend against diffusers' reference pipeline, side by side in one process.

Installed as `t2v_fast.benchmarks`; `t2v-fast bench` (or `python -m t2v_fast.benchmarks`) is its command line.
"""

from pathlib import Path

# The contenders, in the order they run and are reported.
BACKENDS = ("reference", "torch", "torch-compiled", "onnxruntime", "tensorrt")
# The parts of a benchmark run, selectable with --sections.
SECTIONS = ("backends", "memory_sweep", "throughput")
RESULTS_ROOT = Path(__file__).resolve().parent / "results"
