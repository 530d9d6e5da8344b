"""The prepared GPU check, rehearsed on the CPU with --quick: every section runs and its JSON has every field."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

NETWORKS = {"text_encoder", "unet", "vae_decoder"}


@pytest.fixture(scope="module")
def check(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--quick", "--out", str(out), "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return out, json.loads((out / "gpu_check.json").read_text())


def test_every_section_ran_and_is_timed(check):
    out, result = check
    sections = result["sections"]
    assert list(sections) == ["environment", "correctness", "benchmark"]
    for name, section in sections.items():
        assert section["status"] == "done", (name, section.get("error"), section.get("traceback"))
        assert section["seconds"] > 0
    print(f"\ngpu_check --quick sections (s): { {k: v['seconds'] for k, v in sections.items()} }")
    assert result["forbidden_modules_imported"] == [], "the GPU machine has neither prefect nor imageio-ffmpeg"
    assert not list(Path(out).glob("*.mp4"))
    table = (out / "gpu_check.md").read_text()
    assert "| correctness | done |" in table and "| goal | measured | target | met |" in table


def test_environment(check):
    _, result = check
    environment = result["sections"]["environment"]
    assert {"date", "machine", "torch", "diffusers", "transformers"} <= set(environment)


def test_correctness_per_network_and_end_to_end_for_both_families(check):
    _, result = check
    correctness = result["sections"]["correctness"]
    rows = correctness["per_network"]
    assert {(r["preset"], r["component"], r["dtype"]) for r in rows} == {
        (preset, component, dtype)
        for preset in ("tiny-random", "modelscope-tiny-random")
        for component in NETWORKS
        for dtype in ("float16", "bfloat16")
    }
    for row in rows:
        assert row["finite"] and row["reference_rms"] > 0 and row["passed"], row
        assert 0 < row["relative_error"] <= row["tolerance"]  # reduced precision differs, within its tolerance
    assert correctness["families"] == ["modelscope", "text2video-zero"]
    for row in correctness["end_to_end"]:
        assert row["float32_vs_reference"]["max_pixel_diff"] <= 2, row
        assert row["batched_vs_alone_float32"]["max_pixel_diff"] <= 2, row
        assert row["float16_vs_float32"]["passed"], row
    assert correctness["passed"] is True


def test_benchmark_figures_and_goals(check):
    _, result = check
    benchmark = result["sections"]["benchmark"]
    measured = benchmark["result"]
    assert measured["config"]["preset"] == "tiny-random" and measured["config"]["device"] == "cpu"
    backends = measured["backends"]
    for name in ("reference", "torch"):
        assert backends[name]["available"] and backends[name]["peak_memory_bytes"] > 0
        assert backends[name]["unet_fraction_of_ceiling"] > 0
    assert backends["torch"]["max_pixel_diff_vs_reference"] <= 2
    assert measured["matmul_ceiling"]["tflops"] > 0 and measured["throughput"]["batched_videos_per_hour"] > 0
    goals = benchmark["goals"]
    assert set(goals) == {
        "end_to_end_speedup_vs_reference",
        "unet_fraction_of_matmul_ceiling",
        "peak_memory_gib_one_video",
        "batched_throughput_vs_reference_one_at_a_time",
    }
    assert all(goal["value"] > 0 and goal["met"] in (True, False) for goal in goals.values())
