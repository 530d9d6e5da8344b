"""Edit rows in a night's manifest: validated with row and column before any model loads, rendered by `t2v-fast
batch`, and skipped on the next night unless their input video (its content) or their request changed."""

from __future__ import annotations

import json

from test_guided_manifest import results_by_id

from benchmarks.guided import moving_shape
from t2v_fast.bulk.manifest import parse_manifest
from t2v_fast.core.params import ParamRequest
from t2v_fast.core.video import write_mp4
from t2v_fast.loading import describe_model

HEADER = "id,prompt,video,image_guidance,start,end,frames\n"
GOOD_ROWS = (
    "winter,make it winter,clips/walk.mp4,,,,\n"
    "gogh,in Van Gogh style,clips/walk.mp4,1.2,0.1,0.4,\n"
    "other,make it night,clips/other.mp4,,,,2\n"
)
BAD_ROWS = (
    "missing,make it winter,clips/missing.mp4,,,,\n"
    "no-video,make it winter,,,,,\n"
    "low-guidance,make it winter,clips/walk.mp4,0.5,,,\n"
    "bad-cut,make it winter,clips/walk.mp4,,0.4,0.2,\n"
    "too-long,make it winter,clips/other.mp4,,,,9\n"
)


def _night(folder, rows: str):
    (folder / "clips").mkdir(parents=True, exist_ok=True)
    write_mp4(moving_shape(4, 48, 64), folder / "clips" / "walk.mp4", fps=8)
    write_mp4(moving_shape(3, 64, 48)[:, ::-1].copy(), folder / "clips" / "other.mp4", fps=6)
    manifest = folder / "night.csv"
    manifest.write_text(HEADER + rows)
    return manifest


def test_edit_rows_are_checked_with_row_and_column(tmp_path, pix2pix_folder):
    manifest = _night(tmp_path / "night", GOOD_ROWS + BAD_ROWS)
    parsed = parse_manifest(manifest, ParamRequest.of(steps=2), describe_model(str(pix2pix_folder)))
    assert [(r.id, r.task) for r in parsed.rows] == [("winter", "edit"), ("gogh", "edit"), ("other", "edit")]
    assert parsed.rows[0].inputs["video"] == str((tmp_path / "night" / "clips" / "walk.mp4").resolve())
    problems = {(p.row, p.column): p.message for p in parsed.problems}
    assert "does not exist" in problems[(5, "video")]
    assert "give the input video to edit" in problems[(6, "video")]
    assert "image_guidance must be >= 1" in problems[(7, "image_guidance")]
    assert "must be after start" in problems[(8, "end")]
    assert "fewer than frames=9" in problems[(9, "video")]
    assert len(problems) == 5


def test_edit_rows_need_an_instruct_pix2pix_model(tmp_path):
    manifest = _night(tmp_path / "night", GOOD_ROWS)
    parsed = parse_manifest(manifest, ParamRequest.of(steps=2), describe_model("tiny-random"))
    assert parsed.rows == []
    assert {(p.row, p.column) for p in parsed.problems} == {(2, "video"), (3, "video"), (4, "video")}
    assert all("video editing runs Instruct-Pix2Pix models" in p.message for p in parsed.problems)


def test_an_edit_night_renders_then_skips_until_an_input_video_changes(cli, tmp_path, pix2pix_folder):
    night = tmp_path / "night"
    manifest = _night(night, GOOD_ROWS + BAD_ROWS)
    out = tmp_path / "out"
    args = ["batch", str(manifest), "--model", str(pix2pix_folder), "--out", str(out), "--steps", "2"]
    first = cli(*args)
    assert first.returncode == 0, first.stderr  # rejected rows are reported; the rest render
    statuses = {k: r["status"] for k, r in results_by_id(out).items()}
    assert statuses == {
        **dict.fromkeys(("winter", "gogh", "other"), "done"),
        **dict.fromkeys(("missing", "no-video", "low-guidance", "bad-cut", "too-long"), "rejected"),
    }
    winter = json.loads((out / "winter.json").read_text())
    assert (winter["model"]["task"], winter["params"]["frames"], winter["params"]["image_guidance"]) == ("edit", 4, 1.5)
    assert winter["video"]["sha256"] == winter["request"]["inputs"]["video"]
    gogh = json.loads((out / "gogh.json").read_text())
    assert gogh["params"]["frames"] == 3 and gogh["params"]["image_guidance"] == 1.2  # 0.1 s to 0.4 s at 8 fps

    second = cli(*args)
    assert second.returncode == 0, second.stderr
    assert {k: r["status"] for k, r in results_by_id(out).items() if r["status"] != "rejected"} == dict.fromkeys(
        ("winter", "gogh", "other"), "skipped"
    )
    # The same path with another video in it is another request: its rows render again, the other stays done.
    write_mp4(moving_shape(4, 48, 64)[:, :, ::-1].copy(), night / "clips" / "walk.mp4", fps=8)
    before = (out / "other.mp4").stat().st_mtime_ns
    third = cli(*args)
    assert third.returncode == 0, third.stderr
    statuses = {k: r["status"] for k, r in results_by_id(out).items() if r["status"] != "rejected"}
    assert statuses == {"winter": "done", "gogh": "done", "other": "skipped"}
    assert (out / "other.mp4").stat().st_mtime_ns == before
