"""Guided rows in a night's manifest: validated with row and column before any model loads, rendered beside plain
rows, and skipped on the next night unless their control video (its content) or their request changed."""

from __future__ import annotations

import csv
import json

import pytest

from benchmarks.guided import moving_shape
from t2v_fast.bulk.manifest import parse_manifest
from t2v_fast.core.params import ParamRequest
from t2v_fast.core.video import write_mp4
from t2v_fast.errors import UserError
from t2v_fast.loading import describe_model

HEADER = "id,prompt,control,annotator,controlnet_scale,start,end,frames\n"


def _night(folder, rows: str):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "clips").mkdir(exist_ok=True)
    write_mp4(moving_shape(4, 48, 64), folder / "clips" / "walk.mp4", fps=8)
    write_mp4(moving_shape(3, 64, 64)[:, ::-1].copy(), folder / "clips" / "other.mp4", fps=6)
    (folder / "notes.mp4").write_text("not a video")
    manifest = folder / "night.csv"
    manifest.write_text(HEADER + rows)
    return manifest


def results_by_id(out) -> dict[str, dict[str, str]]:
    with (out / "results.csv").open() as handle:
        return {row["id"]: row for row in csv.DictReader(handle)}


GOOD_ROWS = (
    "plain,a lighthouse at dusk,,,,,,2\n"
    "walk,a robot walking,clips/walk.mp4,canny,,,,\n"
    "walk-depth,a robot walking,clips/walk.mp4,depth,0.5,0.1,0.4,\n"
    "other,a dancer,clips/other.mp4,none,,,,\n"
)
BAD_ROWS = (
    "missing,a cat,clips/missing.mp4,,,,,\n"
    "notvideo,a cat,notes.mp4,,,,,\n"
    "plain-annotator,a cat,,depth,,,,\n"
    "bad-cut,a cat,clips/walk.mp4,,,0.4,0.2,\n"
    "late,a cat,clips/walk.mp4,,,9,,\n"
)


def test_guided_rows_are_checked_with_row_and_column(tmp_path, tiny_folder, controlnet_folder):
    manifest = _night(tmp_path / "night", GOOD_ROWS + BAD_ROWS)
    card = describe_model(str(tiny_folder), controlnet=str(controlnet_folder))
    parsed = parse_manifest(manifest, ParamRequest.of(steps=2), card)
    assert [r.id for r in parsed.rows] == ["plain", "walk", "walk-depth", "other"]
    assert [r.task for r in parsed.rows] == ["text-to-video", "guided", "guided", "guided"]
    assert parsed.rows[1].inputs["control"] == str((tmp_path / "night" / "clips" / "walk.mp4").resolve())
    problems = {(p.row, p.column): p.message for p in parsed.problems}
    assert "does not exist" in problems[(6, "control")]
    assert "is not a video" in problems[(7, "control")]
    assert "guided video parameter" in problems[(8, "annotator")]
    assert "must be after start" in problems[(9, "end")]
    assert "is not before its end" in problems[(10, "control")]
    assert len(problems) == 5


def test_a_control_row_needs_the_nights_controlnet_and_a_text2video_zero_model(tmp_path, tiny_folder):
    manifest = _night(tmp_path / "night", GOOD_ROWS)
    parsed = parse_manifest(manifest, ParamRequest.of(steps=2), describe_model(str(tiny_folder)))
    assert [r.id for r in parsed.rows] == ["plain"]
    assert {(p.row, p.column) for p in parsed.problems} >= {(3, "control"), (4, "control"), (5, "control")}
    assert all("needs a ControlNet" in p.message for p in parsed.problems if p.column == "control")
    modelscope = parse_manifest(manifest, ParamRequest.of(steps=2), describe_model("modelscope-tiny-random"))
    assert any(p.row == 3 and p.column == "control" and "Text2Video-Zero" in p.message for p in modelscope.problems)


def test_a_mixed_night_renders_then_skips_until_a_control_video_changes(
    cli, tmp_path, tiny_folder, controlnet_folder, depth_folder
):
    night = tmp_path / "night"
    manifest = _night(night, GOOD_ROWS + BAD_ROWS)
    out = tmp_path / "out"
    args = [
        "batch", str(manifest), "--model", str(tiny_folder), "--controlnet", str(controlnet_folder),
        "--depth-model", str(depth_folder), "--out", str(out), "--steps", "2",
    ]  # fmt: skip
    first = cli(*args)
    assert first.returncode == 0, first.stderr  # rejected rows are reported; the rest render
    results = results_by_id(out)
    assert {k: results[k]["status"] for k in ("plain", "walk", "walk-depth", "other")} == dict.fromkeys(
        ("plain", "walk", "walk-depth", "other"), "done"
    )
    assert {
        k: results[k]["status"] for k in ("missing", "notvideo", "plain-annotator", "bad-cut", "late")
    } == dict.fromkeys(("missing", "notvideo", "plain-annotator", "bad-cut", "late"), "rejected")
    walk = json.loads((out / "walk.json").read_text())
    assert walk["model"]["task"] == "guided" and walk["params"]["frames"] == 4
    assert walk["control"]["sha256"] == walk["request"]["inputs"]["control"]
    cut = json.loads((out / "walk-depth.json").read_text())
    assert cut["params"]["frames"] == 3 and cut["params"]["annotator"] == "depth"  # 0.1 s to 0.4 s at 8 fps
    assert json.loads((out / "plain.json").read_text())["model"]["task"] == "text-to-video"

    second = cli(*args)
    assert second.returncode == 0, second.stderr
    assert {k: r["status"] for k, r in results_by_id(out).items() if r["status"] != "rejected"} == dict.fromkeys(
        ("plain", "walk", "walk-depth", "other"), "skipped"
    )
    # The same path with another video in it is another request: its rows render again, the others stay done.
    write_mp4(moving_shape(4, 48, 64)[:, :, ::-1].copy(), night / "clips" / "walk.mp4", fps=8)
    before = (out / "other.mp4").stat().st_mtime_ns
    third = cli(*args)
    assert third.returncode == 0, third.stderr
    statuses = {k: r["status"] for k, r in results_by_id(out).items() if r["status"] != "rejected"}
    assert statuses == {"plain": "skipped", "walk": "done", "walk-depth": "done", "other": "skipped"}
    assert (out / "other.mp4").stat().st_mtime_ns == before


def test_the_nights_defaults_apply_to_the_rows_whose_task_takes_them(tmp_path, tiny_folder, controlnet_folder):
    """Fast mode for the night's plain rows does not refuse the night for its guided ones (guided video refuses fast
    mode), a guided default does not reach a plain row, and a default no task takes is refused with the defaults."""
    manifest = _night(tmp_path / "night", GOOD_ROWS)
    card = describe_model(str(tiny_folder), controlnet=str(controlnet_folder))
    defaults = ParamRequest.of(steps=2, cache_interval=3, controlnet_scale=0.7)
    rows = {r.id: r for r in parse_manifest(manifest, defaults, card).rows}
    assert (rows["plain"].settings.cache_interval, rows["walk"].settings.cache_interval) == (3, 1)
    assert rows["walk"].settings.controlnet_scale == 0.7 and not hasattr(rows["plain"].settings, "controlnet_scale")
    assert rows["walk-depth"].settings.controlnet_scale == 0.5  # the row's own, over the default
    with pytest.raises(UserError, match=r"invalid defaults .*unknown parameter 'sharpness'"):
        parse_manifest(manifest, ParamRequest.of(sharpness=2), card)
