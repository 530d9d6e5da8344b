"""Rendering rows without Prefect: batching, failure isolation, retries, and what counts as already done."""

import errno
import json
import os

import pytest

import t2v_fast.core.video as video_module
from t2v_fast.bulk.manifest import ManifestRow
from t2v_fast.bulk.rendering import batch_groups, is_done, render_rows
from t2v_fast.core.params import ParamRequest
from t2v_fast.loading import describe_model

CARD = describe_model("tiny-random")


def row(number: int, prompt: str, seed: int = 0, videos: int = 1, **params) -> ManifestRow:
    settings = CARD.resolve(ParamRequest.of(**{"frames": 2, "steps": 3, **params}))
    return ManifestRow(number, f"r{number}", prompt, "", seed, videos, settings, CARD.family)


def test_rows_with_equal_settings_share_a_batch():
    rows = [row(2, "a"), row(3, "b", frames=3), row(4, "c"), row(5, "d", videos=2), row(6, "e")]
    groups = batch_groups(rows, max_videos=2)
    assert [[r.row for r in g] for g in groups] == [[2, 4], [6], [3], [5]]


def test_a_failing_row_does_not_cost_the_others(pipeline, tmp_path, monkeypatch):
    original, saved = video_module.Video.save, []

    def save(self, path, fps=None):
        if "r3" in str(path):
            raise ValueError("cannot encode this one")
        saved.append(path.name)
        return original(self, path, fps)

    monkeypatch.setattr(video_module.Video, "save", save)
    results = render_rows(
        pipeline, [row(2, "a"), row(3, "b", seed=1), row(4, "c", seed=2)], tmp_path, backoff_seconds=0
    )
    status = {r.id: (r.status, r.attempts) for r in results}
    assert status == {"r2": ("done", 1), "r3": ("failed", 1), "r4": ("done", 1)}  # deterministic: not retried
    assert "cannot encode this one" in next(r.reason for r in results if r.id == "r3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r2.json", "r2.mp4", "r4.json", "r4.mp4"]
    assert sorted(saved) == ["r2.mp4", "r4.mp4"], "r2, saved before the batch failed, is not rendered again"


def test_transient_errors_are_retried(pipeline, tmp_path, monkeypatch):
    original, calls = video_module.Video.save, []

    def flaky_save(self, path, fps=None):
        calls.append(path)
        if len(calls) == 1:
            raise OSError("network file system hiccup")
        return original(self, path, fps)

    monkeypatch.setattr(video_module.Video, "save", flaky_save)
    [result] = render_rows(pipeline, [row(2, "a")], tmp_path, retries=2, backoff_seconds=0)
    assert (result.status, result.attempts) == ("done", 2)


@pytest.mark.parametrize(
    ("code", "attempts"), [(errno.ENOSPC, 3), (errno.EROFS, 1)], ids=["disk full: retried", "read-only: not retried"]
)
def test_an_unwritable_output_fails_clearly_leaves_nothing_partial_and_renders_next_time(
    pipeline, tmp_path, monkeypatch, code, attempts
):
    def full(frames, path, fps):
        path.write_bytes(b"half an mp4")  # the writer got part-way, as on a disk that fills up
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(video_module, "write_mp4", full)
    [result] = render_rows(pipeline, [row(2, "a")], tmp_path, retries=2, backoff_seconds=0)
    assert (result.status, result.attempts) == ("failed", attempts)
    assert f"cannot write {tmp_path / 'r2.mp4'}: {os.strerror(code)}" in result.reason
    assert list(tmp_path.iterdir()) == [], "no partial or temporary file"

    monkeypatch.undo()  # space freed / share writable again: the next night renders the row
    [result] = render_rows(pipeline, [row(2, "a")], tmp_path)
    assert result.status == "done" and is_done(tmp_path, row(2, "a"), pipeline.backend.card.model_id)


def test_nan_guard_failures_are_not_retried(tmp_path, tiny_folder):
    import torch

    from t2v_fast.backends.torch import TorchBackend
    from t2v_fast.core.models import load_components
    from t2v_fast.families.text2video_zero.pipeline import TextToVideoZeroPipeline

    components = load_components(str(tiny_folder))
    with torch.no_grad():
        components.unet.conv_out.bias.fill_(float("nan"))
    broken = TextToVideoZeroPipeline(components.tokenizer, components.scheduler, TorchBackend(components))
    [result] = render_rows(broken, [row(2, "a")], tmp_path, retries=3, backoff_seconds=0)
    assert (result.status, result.attempts) == ("failed", 1) and "NumericalError" in result.reason


def test_done_means_same_request_and_model(pipeline, tmp_path):
    finished = row(2, "a", seed=4, videos=2)
    [result] = render_rows(pipeline, [finished], tmp_path)
    assert result.outputs == [str(tmp_path / "r2-0.mp4"), str(tmp_path / "r2-1.mp4")]
    model_id = pipeline.backend.card.model_id
    assert is_done(tmp_path, finished, model_id)
    assert not is_done(tmp_path, row(2, "a", seed=5, videos=2), model_id)
    assert not is_done(tmp_path, row(2, "b", seed=4, videos=2), model_id)
    assert not is_done(tmp_path, row(2, "a", seed=4, videos=2, steps=4), model_id)
    assert not is_done(tmp_path, finished, "another-model")
    sidecar = tmp_path / "r2-1.json"
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "seed": 99}))
    assert not is_done(tmp_path, finished, model_id)
    (tmp_path / "r2-0.mp4").unlink()
    assert not is_done(tmp_path, finished, model_id)


@pytest.mark.parametrize("videos", [1, 3])
def test_output_names(pipeline, tmp_path, videos):
    [result] = render_rows(pipeline, [row(7, "a", videos=videos)], tmp_path)
    expected = ["r7.mp4"] if videos == 1 else [f"r7-{k}.mp4" for k in range(videos)]
    assert [p.rsplit("/", 1)[1] for p in result.outputs] == expected


def test_qc_verdicts_follow_the_thresholds_and_reach_results_csv(pipeline, tmp_path):
    from t2v_fast.bulk.manifest import Manifest
    from t2v_fast.bulk.qc import QcThresholds
    from t2v_fast.bulk.rendering import write_reports

    [ok] = render_rows(pipeline, [row(2, "a")], tmp_path / "ok")
    [frozen] = render_rows(pipeline, [row(2, "a")], tmp_path / "strict", qc_thresholds=QcThresholds(frozen_mad=1e9))
    assert (ok.qc, frozen.qc) == ("ok", "frozen")
    # QC is measured as the night saves each video, and its sidecar carries it (with the request's hash).
    sidecar = json.loads((tmp_path / "ok" / "r2.json").read_text())
    assert sidecar["qc"]["verdict"] == "ok" and 0 < sidecar["qc"]["ssim"] <= 1 and sidecar["qc"]["flicker_mad"] > 0
    assert sidecar["request"]["format"] == 1 and len(sidecar["request"]["sha256"]) == 64
    write_reports(tmp_path / "strict", Manifest(rows=[], rejected={}), [frozen])
    lines = (tmp_path / "strict" / "results.csv").read_text().splitlines()
    assert lines[0].endswith(",qc") and lines[1].endswith(",frozen")
