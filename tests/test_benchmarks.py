"""The benchmark harness in --quick mode, through `t2v-fast bench`: every field of its JSON, its table and chart.

The runs measure their own process (peak RSS on the CPU): they run the executable, not `main` in the test process."""

import json
import math
import shutil

import pytest
import torch
from conftest import run_cli
from PIL import Image

STAGES = ("text_encoding", "unet_call", "vae_decode", "end_to_end_per_video")
BACKENDS = ("reference", "torch", "torch-compiled", "onnxruntime", "tensorrt")


@pytest.fixture(scope="module")
def bench(tmp_path_factory, tiny_engines):
    out = tmp_path_factory.mktemp("bench")
    # --quick leaves the ONNX export out; the suite asks for it to cover the onnxruntime contender too, on the
    # session's export of the same preset with fast mode's graphs (`conftest.tiny_engines`) rather than a second
    # export of its own (about 45 s on 2 cores); the run exporting by itself, and timing it, is
    # `test_the_onnxruntime_contender_exports_once_per_run_when_given_no_export` below.
    result = run_cli(
        "bench",
        "--quick",
        "--backends",
        "reference,torch,onnxruntime,tensorrt",
        "--onnx-engines",
        str(tiny_engines),
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    [folder] = out.iterdir()
    return folder, json.loads((folder / "results.json").read_text())


def test_machine_config_ceiling_and_flops(bench):
    folder, result = bench
    assert folder.name.startswith("cpu-") and folder.name.endswith(result["date"][:10])
    assert result["schema_version"] == 1
    assert {"platform", "python", "torch", "cpu_cores", "cpu", "memory_gib"} <= set(result["machine"])
    config = result["config"]
    assert (config["preset"], config["device"], config["dtype"], config["quick"]) == (
        "tiny-random",
        "cpu",
        "float32",
        True,
    )
    assert {"frames", "steps", "height", "width", "t0", "t1"} <= set(config["resolved_params"])
    assert result["matmul_ceiling"]["tflops"] > 0 and result["matmul_ceiling"]["n"] == 2048
    assert 0 < result["flops"]["unet_call"] < result["flops"]["per_video"]
    assert result["dtype_fidelity"] == {"compared": False, "reason": "run in float32"}


def test_every_backend_is_reported(bench):
    _, result = bench
    backends = result["backends"]
    assert tuple(backends) == BACKENDS
    for name in ("reference", "torch", "onnxruntime"):
        entry = backends[name]
        assert entry["available"] is True, entry
        for stage in STAGES:
            timing = entry["stages"][stage]
            assert 0 < timing["median_s"] <= timing["p90_s"] and len(timing["runs_s"]) >= 2
        assert entry["cold_start"]["load_s"] > 0 and entry["cold_start"]["first_generate_s"] > 0
        assert entry["peak_memory_bytes"] > 0
        assert entry["unet_tflops"] > 0 and entry["video_tflops"] > 0 and entry["unet_fraction_of_ceiling"] > 0
        assert entry["speedup_vs_reference"] > 0 and entry["unet_speedup_vs_reference"] > 0
        assert entry["max_pixel_diff_vs_reference"] <= 2, "every backend renders the reference's frames"
    assert backends["reference"]["speedup_vs_reference"] == 1.0
    assert "export_s" not in backends["onnxruntime"]["cold_start"], "the session's export, given: not exported again"
    for name in ("torch-compiled", "tensorrt"):
        assert backends[name]["available"] is False and backends[name]["reason"]
    assert "TensorRT is not installed" in backends["tensorrt"]["reason"]


def test_memory_sweep_and_throughput(bench):
    _, result = bench
    sweep = result["memory_sweep"]
    assert [(row["frames"], row["chunk_size"]) for row in sweep] == [(4, None), (8, 4)]
    assert all(row["peak_memory_bytes"] > 0 and row["seconds"] > 0 for row in sweep)
    throughput = result["throughput"]
    assert throughput["videos"] == 2
    assert throughput["sequential_videos_per_hour"] > 0 and throughput["batched_videos_per_hour"] > 0


def test_markdown_and_chart(bench):
    folder, _ = bench
    table = (folder / "results.md").read_text()
    for name in BACKENDS:
        assert f"| {name} |" in table
    assert "Memory sweep" in table and "Throughput" in table
    with Image.open(folder / "chart.png") as chart:
        assert chart.format == "PNG" and chart.width == 720


def test_fast_section(bench):
    """Exact and fast mode at intervals 2, 3 and 5 on every backend with a fast mode and on the reference (DeepCache's
    own helper): fewer FLOPs, the reference's schedule of full and shallow calls and its frames, finite drift."""
    folder, result = bench
    fast = result["fast"]
    assert (fast["intervals"], fast["branch"]) == ([1, 2, 3, 5], 0)
    contenders = fast["contenders"]
    assert tuple(contenders) == ("reference", "torch", "onnxruntime", "tensorrt")
    assert "TensorRT is not installed" in contenders["tensorrt"]["reason"]
    reference_calls = [(r["unet"]["full_calls"], r["unet"]["shallow_calls"]) for r in contenders["reference"]["runs"]]
    for name in ("reference", "torch", "onnxruntime"):
        runs = contenders[name]["runs"]
        assert [r["cache_interval"] for r in runs] == [1, 2, 3, 5]
        assert all(r["available"] for r in runs), runs
        exact = runs[0]
        assert exact["unet"]["shallow_calls"] == 0 and exact["drift_vs_exact"] == {"max": 0, "mean": 0.0}
        assert [(r["unet"]["full_calls"], r["unet"]["shallow_calls"]) for r in runs] == reference_calls
        for row in runs:
            assert 0 < row["end_to_end_per_video"]["median_s"] <= row["end_to_end_per_video"]["p90_s"]
            assert row["unet"]["seconds_per_video"] > 0 and row["unet"]["full_call_median_s"] > 0
            assert row["speedup_vs_exact"] > 0 and row["speedup_vs_reference_exact"] > 0
            drift = row["drift_vs_exact"]
            assert drift["max"] >= 0 and math.isfinite(drift["mean"]) and drift["mean"] >= 0
            assert 0 < row["qc"]["temporal_flickering"] <= 1 and row["qc"]["verdict"]
            if name != "reference":
                assert row["diff_vs_reference_same_interval"]["max"] <= 2, "our fast mode renders DeepCache's frames"
        for row in runs[1:]:
            assert row["unet"]["shallow_calls"] > 0 and row["unet"]["shallow_call_median_s"] > 0
            assert row["flops_per_video"] < exact["flops_per_video"] and row["flops_ratio_vs_exact"] < 1
    table = (folder / "results.md").read_text()
    assert "## Fast mode (DeepCache)" in table
    assert "Drift is measured on random weights; quality on trained weights is not measured here." in table
    for name in ("reference", "torch", "onnxruntime"):
        for interval in (1, 2, 3, 5):
            assert f"| {name} | {interval} | " in table
    assert "| tensorrt | - | not available: TensorRT is not installed" in table


def test_the_onnxruntime_contender_exports_once_per_run_when_given_no_export(tiny_engines, tmp_path, monkeypatch):
    """Without --onnx-engines the onnxruntime contender exports the run's model with fast mode's graphs at the run's
    shapes, times the export as its cold start, and the next section's contender reuses it. The exporter itself is
    the session's (`conftest.tiny_engines`, the same `export_model` through the CLI): here a copy of its export
    stands in for it."""
    import export
    from benchmarks.runners import onnxruntime_runner

    calls = []

    def exported_by_copy(model, out, settings, progress=True, device="cpu"):
        calls.append((model, settings, progress, device))
        shutil.copytree(tiny_engines, out)

    monkeypatch.setattr(export, "export_model", exported_by_copy)
    engines = tmp_path / "onnxruntime-engines"
    pipeline, cold = onnxruntime_runner("tiny-random", torch.device("cpu"), "fp32", 4, 64, 64, engines)._prepare()
    [(model, settings, progress, device)] = calls
    assert (model, progress, device) == ("tiny-random", False, "cpu")
    assert (settings.frames, settings.height, settings.width, settings.videos) == (4, 64, 64, 1)
    assert (settings.dtype, settings.fast) == ("fp32", True)
    assert cold["export_s"] > 0 and cold["load_s"] > 0
    assert pipeline.backend.name == "onnxruntime"
    _, again = onnxruntime_runner("tiny-random", torch.device("cpu"), "fp32", 4, 64, 64, engines)._prepare()
    assert len(calls) == 1 and "export_s" not in again, "the sections of one run share one export"


def test_a_given_export_of_other_weights_or_without_fast_graphs_is_refused(tiny_engines, tmp_path):
    from benchmarks.harness import _check_reused_export

    weights = json.loads((tiny_engines / "engine.json").read_text())["source"]["weights_sha256"]
    _check_reused_export(tiny_engines, weights)
    with pytest.raises(ValueError, match="not an engine directory"):
        _check_reused_export(tmp_path, weights)
    with pytest.raises(ValueError, match="other weights"):
        _check_reused_export(tiny_engines, "0" * 64)
    exact = tmp_path / "exact"
    shutil.copytree(tiny_engines, exact)
    manifest = json.loads((exact / "engine.json").read_text())
    manifest["export"]["fast"] = False
    (exact / "engine.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="without --fast"):
        _check_reused_export(exact, weights)


def test_modelscope_against_its_own_reference(tmp_path):
    """`--preset modelscope-...` races TextToVideoSDPipeline; the memory sweep measures what our savings save."""
    result = run_cli(
        "bench",
        "--quick",
        "--preset",
        "modelscope-tiny-random",
        "--backends",
        "reference,torch",
        "--sections",
        "backends,memory_sweep",
        "--out",
        str(tmp_path),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    [folder] = tmp_path.iterdir()
    report = json.loads((folder / "results.json").read_text())
    assert report["config"]["family"] == "modelscope" and "throughput" not in report
    assert "motion_x" not in report["config"]["resolved_params"]  # a Text2Video-Zero parameter
    backends = report["backends"]
    assert backends["reference"]["available"] and backends["torch"]["available"]
    assert backends["torch"]["max_pixel_diff_vs_reference"] <= 2
    assert backends["onnxruntime"]["reason"] == "not selected for this run (--quick)"
    for row in report["memory_sweep"]:
        assert row["chunk_size"] is None and row["without_savings"]["peak_memory_bytes"] > 0
    assert "without savings" in (folder / "results.md").read_text()


def test_unknown_section_is_a_clear_error(cli, tmp_path):
    result = cli("bench", "--quick", "--sections", "speed", "--out", str(tmp_path))
    assert result.returncode == 2 and "unknown benchmark sections speed" in result.stderr
    assert "Traceback" not in result.stderr
    result = cli("bench", "--quick", "--onnx-engines", str(tmp_path), "--out", str(tmp_path))
    assert result.returncode == 2 and "not an engine directory (no engine.json)" in result.stderr
    assert "Traceback" not in result.stderr


def test_results_default_outside_the_tree_and_never_overwrite(tmp_path):
    from benchmarks import COMMITTED_RESULTS, RESULTS_ROOT
    from benchmarks.harness import new_folder

    tree = COMMITTED_RESULTS.parent.parent
    assert not RESULTS_ROOT.resolve().is_relative_to(tree.resolve())
    first, second = new_folder(tmp_path, "cpu-2core-2026-12-01"), new_folder(tmp_path, "cpu-2core-2026-12-01")
    assert (first.name, second.name) == ("cpu-2core-2026-12-01", "cpu-2core-2026-12-01-2")


def test_results_are_reported_after_every_contender_and_section():
    """A run stopped at its time limit must still have written what it measured."""
    from benchmarks.harness import BenchConfig, run_benchmark
    from benchmarks.report import markdown

    snapshots = []

    def record(result):
        snapshots.append(json.loads(json.dumps(result, default=str)))
        markdown(result)  # every partial result renders

    config = BenchConfig.quick_config(backends=("torch",), sections=("backends", "throughput"), repeats=1)
    final = run_benchmark(config, record)
    assert "backends" not in snapshots[0]
    torch_done = next(i for i, s in enumerate(snapshots) if s.get("backends", {}).get("torch", {}).get("available"))
    assert "throughput" not in snapshots[torch_done] and "throughput" in snapshots[-1]
    assert snapshots[-1]["throughput"] == json.loads(json.dumps(final["throughput"]))


GUIDED_STAGES = ("text_encoding", "guided_step", "vae_decode", "end_to_end_per_video")


def test_guided_section_races_the_controlnet_recipe(tmp_path, guided_engines, monkeypatch):
    """`--sections guided`: guided video (tiny-random with tiny-random-controlnet) on torch and ONNX Runtime (the
    session's guided export, `conftest.guided_engines`, so nothing is exported) against diffusers'
    `StableDiffusionControlNetPipeline` recipe: every stage timed, our frames within 2/255 of the reference's, the
    ratios and the table. The section is not in the default run (`bench` above stays as it was).

    One torch thread: on a shared 2-core host, torch's two OpenMP threads run this tiny model's steps ~70× slower
    while another process holds a core (measured: a guided step 40 ms on one thread, 2.9 s on two), and this checks
    the harness, not speed."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    result = run_cli(
        "bench",
        "--quick",
        "--sections",
        "guided",
        "--backends",
        "reference,torch,onnxruntime,tensorrt",
        "--guided-engines",
        str(guided_engines),
        "--out",
        str(tmp_path),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("reference", "torch", "onnxruntime", "tensorrt"):
        assert f"guided {name}: " in result.stdout
    [folder] = tmp_path.iterdir()
    report = json.loads((folder / "results.json").read_text())
    assert "backends" not in report and "fast" not in report and "memory_sweep" not in report
    guided = report["guided"]
    assert guided["available"] and guided["controlnet"] == "tiny-random-controlnet" and guided["annotator"] == "none"
    assert guided["control_video"] == {"frames": 4, "height": 64, "width": 64}
    assert "annotator none" in guided["note"] and "out of the race" in guided["note"]
    assert guided["onnx_engines"] == {"source": "given (--guided-engines)", "path": str(guided_engines)}
    contenders = guided["contenders"]
    assert tuple(contenders) == ("reference", "torch", "onnxruntime", "tensorrt")
    for name in ("reference", "torch", "onnxruntime"):
        entry = contenders[name]
        assert entry["available"] is True, entry
        for stage in GUIDED_STAGES:
            timing = entry["stages"][stage]
            assert 0 < timing["median_s"] <= timing["p90_s"] and len(timing["runs_s"]) >= 2
            assert entry["stage_speedups_vs_reference"][stage] > 0
        assert entry["cold_start"]["load_s"] > 0 and entry["cold_start"]["first_generate_s"] > 0
        assert entry["peak_memory_bytes"] > 0 and entry["speedup_vs_reference"] > 0
        assert entry["pixel_diff_vs_reference"]["max"] <= 2, "every backend renders the recipe's frames"
        assert 0 <= entry["pixel_diff_vs_reference"]["mean"] <= 2
    assert contenders["reference"]["speedup_vs_reference"] == 1.0
    assert contenders["reference"]["pixel_diff_vs_reference"] == {"max": 0, "mean": 0.0}
    assert "export_s" not in contenders["onnxruntime"]["cold_start"], "the session's export, given: not exported again"
    assert "TensorRT is not installed" in contenders["tensorrt"]["reason"]
    table = (folder / "results.md").read_text()
    assert "## Guided video (ControlNet)" in table and "| contender | end to end | speed-up | guided step |" in table
    for name in ("reference", "torch", "onnxruntime"):
        assert f"| {name} | " in table
    assert "| tensorrt | not available: TensorRT is not installed" in table


def test_a_given_guided_export_must_hold_the_runs_model_and_controlnet(guided_engines, tmp_path):
    from benchmarks.guided import check_guided_export

    card = json.loads((guided_engines / "engine.json").read_text())
    weights, controlnet = card["source"]["weights_sha256"], card["model_info"]["controlnet_sha256"]
    assert check_guided_export(guided_engines, weights, controlnet) is None
    assert "not an engine directory" in check_guided_export(tmp_path, weights, controlnet)
    assert "other weights" in check_guided_export(guided_engines, "0" * 64, controlnet)
    assert "another ControlNet" in check_guided_export(guided_engines, weights, "0" * 64)
    plain = tmp_path / "plain"
    shutil.copytree(guided_engines, plain)
    card["model_info"]["controlnet"] = ""
    (plain / "engine.json").write_text(json.dumps(card))
    assert "without a ControlNet" in check_guided_export(plain, weights, controlnet)


def test_guided_section_is_unavailable_without_a_controlnet_preset():
    from benchmarks import DEFAULT_SECTIONS, SECTIONS
    from benchmarks.guided import unavailable_reason

    assert "guided" in SECTIONS and "guided" not in DEFAULT_SECTIONS, "the default run (and `bench`) stays as fast"
    assert unavailable_reason("tiny-random", "text2video-zero") is None
    assert unavailable_reason("sd15-random", "text2video-zero") is None
    assert "no ControlNet preset fits small-random" in unavailable_reason("small-random", "text2video-zero")
    assert "runs on Text2Video-Zero models" in unavailable_reason("modelscope-tiny-random", "modelscope")


def test_edit_section_races_the_instruct_pix2pix_recipe(tmp_path, monkeypatch):
    """`--sections edit` at the smallest settings (tiny-random's size: pix2pix-tiny-random, 2 frames, 2 steps, one
    repeat): diffusers' `StableDiffusionInstructPix2PixPipeline` recipe and our torch backend in one run, our frames
    within 2/255 of the reference's, the ratios those of the same run's medians, the table; TensorRT absent says why.
    One torch thread, as the guided section's test, for the same reason."""
    from benchmarks.edit import STAGES, unavailable_reason

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    settings = ("--frames", "2", "--steps", "2", "--repeats", "1")
    result = run_cli("bench", "--quick", "--sections", "edit", *settings, "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    [folder] = tmp_path.iterdir()
    report = json.loads((folder / "results.json").read_text())
    assert "backends" not in report and "guided" not in report and {"cpu", "cpu_cores"} <= set(report["machine"])
    edit = report["edit"]
    assert edit["available"] and edit["model"] == "pix2pix-tiny-random"
    assert edit["input_video"] == {"frames": 2, "height": 64, "width": 64}
    assert (edit["guidance"], edit["image_guidance"]) == (7.5, 1.5)
    contenders = edit["contenders"]
    assert tuple(contenders) == ("reference", "torch", "onnxruntime", "tensorrt")
    reference, ours = contenders["reference"], contenders["torch"]
    assert reference["available"] and ours["available"], (reference, ours)
    assert ours["pixel_diff_vs_reference"]["max"] <= 2, "the torch backend renders the recipe's frames"
    assert reference["pixel_diff_vs_reference"] == {"max": 0, "mean": 0.0}
    for stage in STAGES:
        theirs, mine = reference["stages"][stage]["median_s"], ours["stages"][stage]["median_s"]
        assert ours["stage_speedups_vs_reference"][stage] == pytest.approx(theirs / mine, rel=1e-12)
    assert ours["speedup_vs_reference"] == ours["stage_speedups_vs_reference"]["end_to_end_per_video"]
    assert contenders["onnxruntime"]["reason"] == "not selected for this run (--quick)"
    assert "TensorRT is not installed" in contenders["tensorrt"]["reason"]
    table = (folder / "results.md").read_text()
    assert "## Video editing (Instruct-Pix2Pix)" in table
    assert "| contender | end to end | speed-up | edit step |" in table
    assert "| reference | " in table and "| torch | " in table
    assert "no Instruct-Pix2Pix preset of small-random's size" in unavailable_reason("small-random")
