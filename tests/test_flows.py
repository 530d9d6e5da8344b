"""The nightly flow in-process under Prefect's test harness (a real, temporary Prefect API with SQLite)."""

import csv
import json
import re
from pathlib import Path

import pytest
from conftest import run_cli
from test_video_output import read_mp4

REPO = Path(__file__).resolve().parent.parent

MANIFEST = (
    "id,prompt,negative_prompt,seed,frames\n"
    'cat,"a cat playing piano, studio light",blurry,1,\n'
    "dog,a dog surfing,,2,4\n"
    "bad-frames,a bird,,3,zero\n"
    ",a red car in the rain,,,\n"
    "dog,a duplicate id,,,\n"
    "nop,,,,\n"
)


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def read_csv(path):
    with path.open() as handle:
        return list(csv.DictReader(handle))


def outputs_and_times(folder):
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.suffix in (".mp4", ".json")}


@pytest.mark.server  # the harness: a real, temporary Prefect API
def test_nightly_renders_good_rows_and_reports_every_row(harness, tmp_path):
    from flows.nightly import nightly

    manifest = tmp_path / "prompts.csv"
    manifest.write_text(MANIFEST)
    out = tmp_path / "out"
    counts = nightly(str(manifest), str(out), model="tiny-random", shard_size=2, defaults={"frames": 3, "steps": 4})
    assert counts == {"done": 3, "skipped": 0, "failed": 0, "rejected": 3}

    results = read_csv(out / "results.csv")
    assert [(r["row"], r["status"]) for r in results] == [
        ("2", "done"),
        ("3", "done"),
        ("4", "rejected"),
        ("5", "done"),
        ("6", "rejected"),
        ("7", "rejected"),
    ]
    assert results[2]["reason"] == "row 4, column frames: 'zero' is not an integer"
    assert "duplicate id 'dog' (first at row 3)" in results[4]["reason"]
    assert read_csv(out / "rejected.csv") == [
        {"row": "4", "column": "frames", "problem": "'zero' is not an integer"},
        {"row": "6", "column": "id", "problem": "duplicate id 'dog' (first at row 3)"},
        {"row": "7", "column": "prompt", "problem": "missing prompt"},
    ]
    car = results[3]["id"]
    assert car.startswith("row-")
    expected_frames = {"cat": 3, "dog": 4, car: 3}
    for name, frames in expected_frames.items():
        assert read_mp4(out / f"{name}.mp4")[1].shape[0] == frames
        sidecar = json.loads((out / f"{name}.json").read_text())
        assert sidecar["model"]["id"] == "tiny-random" and sidecar["params"]["steps"] == 4
    assert json.loads((out / "cat.json").read_text())["negative_prompt"] == "blurry"
    assert sorted(outputs_and_times(out)) == sorted(f"{n}.{e}" for n in expected_frames for e in ("mp4", "json"))

    before = outputs_and_times(out)
    again = nightly(str(manifest), str(out), model="tiny-random", shard_size=2, defaults={"frames": 3, "steps": 4})
    assert again == {"done": 0, "skipped": 3, "failed": 0, "rejected": 3}
    assert outputs_and_times(out) == before, "a re-run must not rewrite any output"
    assert [r["status"] for r in read_csv(out / "results.csv")][:2] == ["skipped", "skipped"]

    changed = nightly(str(manifest), str(out), model="tiny-random", shard_size=2, defaults={"frames": 3, "steps": 5})
    assert changed["done"] == 3, "changed defaults are a different request: rendered again"


def test_batch_command_on_the_example_manifest(tmp_path):
    """README's command, as written, from a fresh output folder: exit 0 even though one example row is rejected."""
    out = tmp_path / "videos"
    result = run_cli(
        "batch", "examples/prompts.csv", "--model", "tiny-random", "--out", str(out), "--steps", "6", cwd=REPO
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rejected   1" in result.stdout
    # The summary says why a row was rejected (row and column) and what QC found in what this run rendered.
    assert (
        f"rejected rows: 1 problems (all in {out / 'rejected.csv'})\n  row 6, column steps: 'one' is not an integer\n"
        in (result.stdout)
    )
    assert re.search(r"^QC: (all 4 rows rendered this run ok|.+ of 4 rows rendered this run)$", result.stdout, re.M)
    statuses = [r["status"] for r in read_csv(out / "results.csv")]
    assert statuses.count("done") == 4 and statuses.count("rejected") == 1
    strict = run_cli("batch", "examples/prompts.csv", "--out", str(out), "--steps", "6", "--strict", cwd=REPO)
    assert strict.returncode == 1 and "skipped    4" in strict.stdout
    assert "QC: no rows rendered this run" in strict.stdout  # the re-run rendered nothing


def test_batch_rejects_a_broken_file_in_one_line(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,text\n1,a cat\n")
    result = run_cli("batch", str(manifest), "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "no 'prompt' column" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.server  # the harness: a real, temporary Prefect API
def test_nightly_takes_a_modelscope_model_without_new_flags(harness, tmp_path):
    from flows.nightly import nightly

    manifest = tmp_path / "prompts.csv"
    manifest.write_text("id,prompt,seed,frames,t0\nkite,a red kite,1,3,\nsea,the sea,2,,\nlate,a bird,3,3,40\n")
    out = tmp_path / "out"
    counts = nightly(str(manifest), str(out), model="modelscope-tiny-random", shard_size=1, defaults={"steps": 3})
    assert counts == {"done": 2, "skipped": 0, "failed": 0, "rejected": 1}
    assert read_csv(out / "rejected.csv") == [
        {
            "row": "4",
            "column": "t0",
            "problem": "t0 is a Text2Video-Zero parameter; ModelScope text-to-video models do not take it",
        }
    ]
    sidecar = json.loads((out / "sea.json").read_text())
    assert sidecar["model"]["family"] == "modelscope" and sidecar["params"]["frames"] == 16
    assert read_mp4(out / "kite.mp4")[1].shape == (3, 64, 64, 3)


@pytest.mark.server  # the harness: a real, temporary Prefect API
def test_a_night_in_fast_mode_with_a_row_that_asks_for_the_exact_path(harness, tmp_path):
    """Fast mode as the night's default (a flow parameter), one row back on the exact path by its column."""
    from flows.nightly import nightly

    manifest = tmp_path / "prompts.csv"
    manifest.write_text("id,prompt,seed,cache_interval\nfast,a red kite,1,\nexact,a red kite,1,1\n")
    out = tmp_path / "out"
    defaults = {"frames": 2, "steps": 6, "cache_interval": 3}
    counts = nightly(str(manifest), str(out), model="tiny-random", shard_size=1, defaults=defaults)
    assert counts == {"done": 2, "skipped": 0, "failed": 0, "rejected": 0}
    sidecars = {name: json.loads((out / f"{name}.json").read_text()) for name in ("fast", "exact")}
    assert sidecars["fast"]["params"]["cache_interval"] == 3 and sidecars["exact"]["params"]["cache_interval"] == 1
    fast, exact = (read_mp4(out / f"{name}.mp4")[1] for name in ("fast", "exact"))
    assert fast.shape == exact.shape == (2, 64, 64, 3) and (fast != exact).any()


@pytest.mark.server  # the harness: a real, temporary Prefect API
def test_nightly_renders_plain_and_guided_rows_of_one_manifest(harness, tmp_path):
    """Guided rows travel to the shards as JSON and come back typed (their task's settings), with the night's
    ControlNet; a guided row without it, or on another family, would have been rejected (test_guided_manifest)."""
    from benchmarks.guided import moving_shape
    from flows.nightly import nightly
    from t2v_fast.core.video import write_mp4

    write_mp4(moving_shape(3, 48, 64), tmp_path / "walk.mp4", fps=8)
    manifest = tmp_path / "mixed.csv"
    manifest.write_text(
        "id,prompt,control,annotator,frames\nplain,a cat,,,2\nwalk,a robot walking,walk.mp4,canny,\n"
        "edges,a robot walking,walk.mp4,none,2\n"
    )
    out = tmp_path / "out"
    options = dict(model="tiny-random", controlnet="tiny-random-controlnet", shard_size=2, defaults={"steps": 2})
    assert nightly(str(manifest), str(out), **options) == {"done": 3, "skipped": 0, "failed": 0, "rejected": 0}
    walk = json.loads((out / "walk.json").read_text())
    assert (walk["model"]["task"], walk["model"]["controlnet"]["id"], walk["params"]["frames"]) == (
        "guided",
        "tiny-random-controlnet",
        3,
    )
    assert read_mp4(out / "edges.mp4")[1].shape[0] == 2
    assert json.loads((out / "plain.json").read_text())["model"]["task"] == "text-to-video"
    assert nightly(str(manifest), str(out), **options) == {"done": 0, "skipped": 3, "failed": 0, "rejected": 0}


@pytest.mark.server  # the harness: a real, temporary Prefect API
def test_nightly_renders_a_manifest_of_edit_rows(harness, tmp_path):
    """Edit rows travel to the shards as JSON and come back typed (video editing's settings); a row without its
    video is rejected with its column, before the model loads."""
    from benchmarks.guided import moving_shape
    from flows.nightly import nightly
    from t2v_fast.core.video import write_mp4

    write_mp4(moving_shape(3, 48, 64), tmp_path / "walk.mp4", fps=8)
    manifest = tmp_path / "edits.csv"
    manifest.write_text(
        "id,prompt,video,image_guidance,frames\nwinter,make it winter,walk.mp4,,\n"
        "gogh,in Van Gogh style,walk.mp4,1.2,2\nno-video,make it night,,,\n"
    )
    out = tmp_path / "out"
    options = dict(model="pix2pix-tiny-random", shard_size=1, defaults={"steps": 2})
    assert nightly(str(manifest), str(out), **options) == {"done": 2, "skipped": 0, "failed": 0, "rejected": 1}
    gogh = json.loads((out / "gogh.json").read_text())
    assert (gogh["model"]["task"], gogh["params"]["image_guidance"], gogh["params"]["frames"]) == ("edit", 1.2, 2)
    assert read_mp4(out / "winter.mp4")[1].shape == (3, 48, 64, 3)
    rejected = {row["id"]: row for row in read_csv(out / "results.csv")}["no-video"]
    assert rejected["status"] == "rejected" and "video" in rejected["reason"]
    assert nightly(str(manifest), str(out), **options) == {"done": 0, "skipped": 2, "failed": 0, "rejected": 1}
