"""Benchmark harness: every backend against diffusers' reference pipeline, side by side in one process."""
