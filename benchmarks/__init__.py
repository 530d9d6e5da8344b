"""Benchmark harness: every backend against diffusers' reference pipeline, side by side in one process.

`t2v-fast bench` (or `python -m benchmarks`) is its command line.
"""

import tempfile
from pathlib import Path

# The contenders, in the order they run and are reported.
BACKENDS = ("reference", "torch", "torch-compiled", "onnxruntime", "tensorrt")
# The parts of a benchmark run, selectable with --sections; a run without --sections runs DEFAULT_SECTIONS: guided
# video (`guided`) and video editing (`edit`) only when asked for (each needs a preset with its model, and an export
# of its own).
SECTIONS = ("backends", "memory_sweep", "throughput", "fast", "guided", "edit")
DEFAULT_SECTIONS = ("backends", "memory_sweep", "throughput", "fast")
# Where a run writes by default: outside the source tree, so a run never edits tracked files. Results worth keeping
# are written (or copied) to COMMITTED_RESULTS, `--out benchmarks/results`, by name of device and date.
RESULTS_ROOT = Path(tempfile.gettempdir()) / "t2v-fast-bench"
COMMITTED_RESULTS = Path(__file__).resolve().parent / "results"
