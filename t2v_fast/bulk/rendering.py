"""Bulk rendering of manifest rows: plain functions that the Prefect flows orchestrate, testable without Prefect.

A row is done when each of its videos has an MP4 and a sidecar whose request and model match: the request is
compared by its hash (`request_sha256`: prompt, negative prompt, seed, the parameters that differ from their
defaults, input videos' hashes, under a format version), so a parameter added later, left at its default, leaves
every earlier night's outputs done. The sidecar is written last and atomically, so a done row is never half-written
and re-running a night never renders it again. Quality control is measured here, as each video is saved.
"""

from __future__ import annotations

import collections
import csv
import errno
import glob
import hashlib
import io
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from t2v_fast.atomic import atomic_path
from t2v_fast.bulk import qc
from t2v_fast.bulk.claims import Claims, Holder
from t2v_fast.bulk.manifest import Manifest, ManifestRow
from t2v_fast.bulk.qc import QcThresholds
from t2v_fast.core.families import TEXT_TO_VIDEO, family_named, settings_of, task_named
from t2v_fast.core.params import default_of, param_infos
from t2v_fast.core.pipeline import VideoPipeline
from t2v_fast.errors import NumericalError, UserError

logger = logging.getLogger("t2v_fast.bulk.rendering")

# Failures worth another try: the file system, the network, GPU memory taken by someone else. Anything else is
# deterministic for the same input (bad values, the NaN guard, a bug) and retrying only wastes the night.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (OSError, TimeoutError, torch.cuda.OutOfMemoryError)
# Of those, what no retry tonight will change: the output folder is read-only or not ours to write.
PERMANENT_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM}
STATUSES = ("done", "skipped", "failed", "rejected")
# The version of what `request_sha256` hashes; sidecars of another version (or of none: written before the hash) are
# compared by hashing what they record.
REQUEST_FORMAT = 1
RESULT_COLUMNS = ("id", "row", "status", "reason", "seconds", "output", "attempts", "qc")


@dataclass
class RowResult:
    id: str
    row: int
    status: str
    reason: str = ""
    seconds: float = 0.0
    outputs: list[str] = field(default_factory=list)
    attempts: int = 0
    qc: str = ""  # the QC verdict of the row's videos: ok, frozen or flickering (several: all that apply)


def output_paths(out_dir: Path, row: ManifestRow) -> list[Path]:
    """`OUT/<id>.mp4`, or `OUT/<id>-<k>.mp4` for each of several videos per prompt."""
    if row.videos_per_prompt == 1:
        return [out_dir / f"{row.id}.mp4"]
    return [out_dir / f"{row.id}-{k}.mp4" for k in range(row.videos_per_prompt)]


def request_sha256(
    prompt: str,
    negative_prompt: str,
    seed: int,
    params: dict[str, Any],
    family: str,
    inputs: dict[str, str] | None = None,
    task: str = TEXT_TO_VIDEO.name,
) -> str:
    """The hash of what determines one video: its prompts and seed, the resolved parameters that differ from the
    defaults of its family's task (derived ones, such as the native size, always count), and the content hash of
    each input video. A parameter at its fixed, family or task default is left out, so adding one changes no earlier
    request's hash; a value is taken as its parameter's type (a whole-number motion written as 4 by an earlier
    version is 4.0)."""
    settings, defaults, _ = settings_of(family_named(family), task_named(task))
    infos = {info.name: info for info in param_infos(settings)}
    changed = {}
    for name, value in params.items():
        info = infos.get(name)
        if info is not None and info.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if value is not None and (info is None or value != default_of(info, defaults)):
            changed[name] = value
    payload = {
        "format": REQUEST_FORMAT,
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "seed": seed,
        "params": changed,
        "inputs": inputs or {},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def row_request_sha256(row: ManifestRow, video: int) -> str:
    settings = row.settings.as_dict()
    seed = row.seed + video
    return request_sha256(row.prompt, row.negative_prompt, seed, settings, row.family, row.input_sha256, row.task)


def row_request_record(row: ManifestRow, video: int) -> dict[str, Any]:
    """What a sidecar records of its request: the hash, the input videos' hashes, and the parameters the row left
    for its input video to set (a guided video's length, rate and size), which the hash leaves out."""
    from_inputs = ("frames", "fps", "height", "width") if row.inputs else ()
    unset = sorted(name for name in from_inputs if getattr(row.settings, name) is None)
    return {
        "format": REQUEST_FORMAT,
        "sha256": row_request_sha256(row, video),
        "inputs": row.input_sha256,
        "unset": unset,
    }


def recorded_request_sha256(meta: dict[str, Any]) -> str | None:
    """The hash of the request a sidecar records (its prompts, seed, parameters and input hashes), or None when it
    records no readable request, or a hash of this format that disagrees with what it records (an edited sidecar).
    A sidecar of another format, or written before the hash, is taken by what it records."""
    recorded = meta.get("request", {})
    try:
        unset = set(recorded.get("unset", ()))
        hashed = request_sha256(
            meta["prompt"],
            meta["negative_prompt"],
            meta["seed"],
            {name: value for name, value in meta["params"].items() if name not in unset},
            meta["model"]["family"],
            recorded.get("inputs", {}),
            meta["model"].get("task", TEXT_TO_VIDEO.name),
        )
    except (KeyError, TypeError, AttributeError, UserError):
        return None
    if recorded.get("format") == REQUEST_FORMAT and recorded.get("sha256") != hashed:
        return None
    return hashed


def is_done(
    out_dir: Path, row: ManifestRow, model_id: str, weights_sha256: str = "", controlnet_sha256: str = ""
) -> bool:
    """Every video of the row exists, with a sidecar recording this very request and model (and these weights, the
    base's and a guided row's ControlNet's, when both sides know them: a model described from configs alone does
    not yet)."""
    for k, path in enumerate(output_paths(out_dir, row)):
        sidecar = path.with_suffix(".json")
        if not (path.is_file() and sidecar.is_file()):
            return False
        try:
            meta = json.loads(sidecar.read_text())
        except (OSError, json.JSONDecodeError):
            return False
        if recorded_request_sha256(meta) != row_request_sha256(row, k):
            return False
        model = meta.get("model", {})
        if model.get("id") != model_id:
            return False
        if weights_sha256 and model.get("weights_sha256") not in (None, weights_sha256):
            return False
        recorded_controlnet = model.get("controlnet", {}).get("weights_sha256")
        if row.inputs and controlnet_sha256 and recorded_controlnet not in (None, controlnet_sha256):
            return False
    return True


def batch_groups(rows: Sequence[ManifestRow], max_videos: int) -> list[list[ManifestRow]]:
    """Rows that share every setting but prompt and seed can denoise as one UNet batch, up to `max_videos` videos."""
    groups: dict[str, list[list[ManifestRow]]] = {}
    for row in rows:
        key = json.dumps([row.settings.as_dict(), row.videos_per_prompt, row.input_sha256], sort_keys=True)
        batches = groups.setdefault(key, [[]])
        if sum(r.videos_per_prompt for r in batches[-1]) + row.videos_per_prompt > max_videos and batches[-1]:
            batches.append([])
        batches[-1].append(row)
    return [batch for batches in groups.values() for batch in batches]


def _render(
    pipeline: VideoPipeline,
    rows: Sequence[ManifestRow],
    out_dir: Path,
    claims: Claims,
    thresholds: QcThresholds,
) -> list[tuple[list[str], str]]:
    """Generate and save the videos of `rows` as one batch; per row, its output paths and QC verdict."""
    seeds = [row.seed + k for row in rows for k in range(row.videos_per_prompt)]
    videos = iter(
        pipeline.generate(
            [row.prompt for row in rows],
            negative_prompt=[row.negative_prompt for row in rows],
            seed=seeds,
            videos_per_prompt=rows[0].videos_per_prompt,
            settings=rows[0].settings,
            progress=False,
            **rows[0].inputs,
        )
    )
    outputs = []
    for row in rows:
        if not claims.holds(row.id):
            raise RuntimeError(f"row {row.row} ({row.id}) was taken over by another run (this one stalled)")
        paths, measured = output_paths(out_dir, row), []
        for k, path in enumerate(paths):
            video = next(videos)
            video.metadata["request"] = row_request_record(row, k)
            video.metadata["qc"] = qc.measure(video.frames, thresholds)
            measured.append(video.metadata["qc"])
            try:
                video.save(path)
            except OSError as error:  # full disk, read-only or vanished share: say which file, keep the errno
                raise OSError(error.errno, f"cannot write {path}: {error.strerror or error}") from error
        outputs.append(([str(p) for p in paths], qc.row_verdict(measured, thresholds)))
    return outputs


def remove_temporaries(out_dir: Path, row: ManifestRow) -> list[Path]:
    """Temporary files an interrupted render of `row` left behind; only called by the holder of the row's claim."""
    stale = [
        tmp
        for path in output_paths(out_dir, row)
        for name in (path.name, path.with_suffix(".json").name)
        for tmp in out_dir.glob(f".{glob.escape(name)}.*.tmp")
    ]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def rendered_result(
    out_dir: Path, row: ManifestRow, status: str, thresholds: QcThresholds, reason: str = ""
) -> RowResult:
    """The result of a row whose outputs are all saved, with the QC verdict its sidecars record."""
    paths = output_paths(out_dir, row)
    measured = [json.loads(p.with_suffix(".json").read_text()).get("qc", {}) for p in paths]
    verdict = qc.row_verdict(measured, thresholds)
    return RowResult(row.id, row.row, status, reason, outputs=[str(p) for p in paths], qc=verdict)


def _claim(
    claims: Claims, out_dir: Path, row: ManifestRow, model: tuple[str, str, str], thresholds: QcThresholds
) -> RowResult | Holder | None:
    """Claim a row to render: None when it is ours to render, a result when another run rendered it, or the live
    holder that is rendering it now; a failed result when the claim cannot be written (a full or read-only disk)."""
    try:
        holder = claims.try_claim(row.id)
    except OSError as error:
        if is_done(out_dir, row, *model):  # nothing to write: what is rendered stays rendered
            return rendered_result(out_dir, row, "skipped", thresholds, "already rendered")
        reason = f"OSError: cannot write {claims.path(row.id)}: {error.strerror or error}"
        return RowResult(row.id, row.row, "failed", reason, attempts=1)
    if holder is None:
        if not is_done(out_dir, row, *model):
            for path in remove_temporaries(out_dir, row):
                logger.info("removed %s, left by an interrupted run", path.name)
            return None
        claims.release(row.id)  # another run finished it between our planning and our claim
        return rendered_result(out_dir, row, "skipped", thresholds, "rendered by another run")
    if is_done(out_dir, row, *model):
        return rendered_result(out_dir, row, "skipped", thresholds, f"rendered by {holder.describe()}")
    return holder


def render_rows(
    pipeline: VideoPipeline,
    rows: Sequence[ManifestRow],
    out_dir: Path,
    retries: int = 2,
    backoff_seconds: float = 2.0,
    max_batch_videos: int = 4,
    on_result: Callable[[RowResult], None] | None = None,
    claims: Claims | None = None,
    wait_seconds: float = 1.0,
    qc_thresholds: QcThresholds | None = None,
) -> list[RowResult]:
    """Render rows, batching where settings agree, each row claimed first so no other run renders it too.

    A failing batch falls back to its rows one by one, so one bad row never costs the others; transient errors are
    retried with exponential backoff, deterministic ones are not. Rows another live run holds are left for last and
    waited for: skipped once it has rendered them, rendered here if it gives them up or dies (its lease expires).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    own_claims = claims is None
    claims = claims or Claims(out_dir, run=f"t2v-fast batch, pid {os.getpid()}")
    card = pipeline.card
    model = (card.model_id, card.weights_sha256, card.controlnet_sha256)  # the weights are known now: they count
    thresholds = qc_thresholds or QcThresholds()
    results: list[RowResult] = []

    def finish(result: RowResult) -> None:
        claims.release(result.id)
        results.append(result)
        if on_result:
            on_result(result)

    def claim_all(candidates: Sequence[ManifestRow]) -> tuple[list[ManifestRow], list[ManifestRow]]:
        mine: list[ManifestRow] = []
        held: list[ManifestRow] = []
        for row in candidates:
            outcome = _claim(claims, out_dir, row, model, thresholds)
            if isinstance(outcome, RowResult):
                finish(outcome)
            else:
                (mine if outcome is None else held).append(row)
        return mine, held

    try:
        waiting: list[ManifestRow] = []
        for group in batch_groups(rows, max_batch_videos):
            mine, held = claim_all(group)
            waiting += held
            _render_group(pipeline, mine, out_dir, claims, thresholds, retries, backoff_seconds, finish)
        while waiting:
            time.sleep(wait_seconds)
            mine, waiting = claim_all(waiting)
            for row in mine:
                finish(render_one(pipeline, row, out_dir, claims, thresholds, retries, backoff_seconds))
    finally:
        if own_claims:
            claims.close()
    return results


def _render_group(
    pipeline: VideoPipeline,
    group: Sequence[ManifestRow],
    out_dir: Path,
    claims: Claims,
    thresholds: QcThresholds,
    retries: int,
    backoff_seconds: float,
    finish: Callable[[RowResult], None],
) -> None:
    started = time.perf_counter()
    if len(group) > 1:
        try:
            outputs = _render(pipeline, group, out_dir, claims, thresholds)
        except Exception as error:  # any failure: isolate it by rendering the rows one by one
            logger.warning("batch of %d rows failed (%s); rendering them one by one", len(group), error)
        else:
            seconds = (time.perf_counter() - started) / len(group)
            for row, (paths, verdict) in zip(group, outputs, strict=True):
                done = RowResult(row.id, row.row, "done", seconds=round(seconds, 3), outputs=paths, attempts=1)
                finish(replace(done, qc=verdict))
            return
    for row in group:
        card = pipeline.card
        saved_before = is_done(out_dir, row, card.model_id, card.weights_sha256, card.controlnet_sha256)
        if len(group) > 1 and saved_before:  # saved before the failure
            saved = rendered_result(out_dir, row, "done", thresholds)
            finish(replace(saved, seconds=round(time.perf_counter() - started, 3), attempts=1))
            continue
        finish(render_one(pipeline, row, out_dir, claims, thresholds, retries, backoff_seconds))


def render_one(
    pipeline: VideoPipeline,
    row: ManifestRow,
    out_dir: Path,
    claims: Claims,
    thresholds: QcThresholds,
    retries: int,
    backoff_seconds: float,
) -> RowResult:
    started = time.perf_counter()
    for attempt in range(1, retries + 2):
        try:
            paths, verdict = _render(pipeline, [row], out_dir, claims, thresholds)[0]
            seconds = round(time.perf_counter() - started, 3)
            return RowResult(row.id, row.row, "done", seconds=seconds, outputs=paths, attempts=attempt, qc=verdict)
        except (UserError, NumericalError) as error:
            reason = f"{type(error).__name__}: {error}"
        except TRANSIENT_ERRORS as error:
            reason = f"{type(error).__name__}: {error}"
            if attempt <= retries and getattr(error, "errno", None) not in PERMANENT_ERRNOS:
                delay = backoff_seconds * 2 ** (attempt - 1)
                logger.warning("row %d (%s): %s; retrying in %.1f s", row.row, row.id, reason, delay)
                time.sleep(delay)
                continue
        except Exception as error:  # a deterministic failure of this row; the night goes on
            reason = f"{type(error).__name__}: {error}"
        return RowResult(row.id, row.row, "failed", reason, round(time.perf_counter() - started, 3), attempts=attempt)
    raise AssertionError("unreachable")


def _write_csv(path: Path, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue(), encoding="utf-8")


def write_reports(out_dir: Path, manifest: Manifest, results: Sequence[RowResult]) -> None:
    """`results.csv`: one line per manifest row in manifest order; `rejected.csv`: one line per problem."""
    by_row = {r.row: r for r in results}
    for number, problems in manifest.rejected.items():
        reason = "; ".join(str(p) for p in problems)
        by_row[number] = RowResult(manifest.rejected_ids[number], number, "rejected", reason)
    lines = [
        (r.id, r.row, r.status, r.reason, r.seconds, ";".join(r.outputs), r.attempts, r.qc)
        for r in sorted(by_row.values(), key=lambda r: r.row)
    ]
    _write_csv(out_dir / "results.csv", RESULT_COLUMNS, lines)
    _write_csv(
        out_dir / "rejected.csv",
        ("row", "column", "problem"),
        ((p.row, p.column, p.message) for p in manifest.problems),
    )


def split_done(
    rows: Sequence[ManifestRow],
    out_dir: Path,
    model_id: str,
    weights_sha256: str = "",
    thresholds: QcThresholds | None = None,
) -> tuple[list[ManifestRow], list[RowResult]]:
    """The rows still to render, and a `skipped` result (with its recorded QC) for each row already rendered."""
    todo, skipped = [], []
    for row in rows:
        if is_done(out_dir, row, model_id, weights_sha256):
            skipped.append(rendered_result(out_dir, row, "skipped", thresholds or QcThresholds(), "already rendered"))
        else:
            todo.append(row)
    return todo, skipped


def qc_summary(results: Sequence[RowResult]) -> str:
    """QC of the rows rendered by this run (`done`), e.g. `QC: 2 frozen, 1 flickering of 40 rows rendered this run`.

    Rows skipped as already rendered keep their recorded verdict in `results.csv` but are not counted here, so the
    line says what this run produced.
    """
    judged = [r for r in results if r.status == "done" and r.qc]
    if not judged:
        return "QC: no rows rendered this run"
    flagged = collections.Counter(v for r in judged for v in r.qc.split(",") if v != "ok")
    rows = f"{len(judged)} row{'s' if len(judged) > 1 else ''} rendered this run"
    if not flagged:
        return f"QC: all {rows} ok"
    return f"QC: {', '.join(f'{n} {v}' for v, n in sorted(flagged.items()))} of {rows}"


def rejection_lines(manifest: Manifest, out_dir: Path, limit: int = 5) -> list[str]:
    """The first `limit` problems of rejected rows, with row and column, and where the rest are."""
    problems = manifest.problems
    if not problems:
        return []
    shown = [f"  row {p.row}, column {p.column}: {p.message}" for p in problems[:limit]]
    first = f"the first {limit} shown, " if len(problems) > limit else ""
    return [f"rejected rows: {len(problems)} problems ({first}all in {out_dir / 'rejected.csv'})", *shown]


def count_statuses(manifest: Manifest, results: Sequence[RowResult]) -> dict[str, int]:
    counts = dict.fromkeys(STATUSES, 0)
    for result in results:
        counts[result.status] += 1
    counts["rejected"] = len(manifest.rejected)
    return counts


def rendered_elsewhere(results: Sequence[RowResult]) -> int:
    """Rows skipped because another run, working at the same time, rendered them."""
    return sum(1 for r in results if r.status == "skipped" and r.reason.startswith("rendered by"))


def shard_heartbeat_path(out_dir: Path, shard: str) -> Path:
    return out_dir / ".t2v-shards" / f"{shard}.alive"


def shard_record_path(out_dir: Path, shard: str) -> Path:
    return out_dir / ".t2v-shards" / f"{shard}.json"


def save_shard_results(out_dir: Path, shard: str, results: Sequence[RowResult]) -> None:
    """What a shard has finished so far, rewritten after every row, so a crash loses no record of finished rows;
    with the host and process rendering it, for whoever has to find out what happened to a shard."""
    path = shard_record_path(out_dir, shard)
    path.parent.mkdir(exist_ok=True)
    record = {"host": socket.gethostname(), "pid": os.getpid(), "results": [asdict(r) for r in results]}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record))


def shard_record(out_dir: Path, shard: str) -> dict[str, Any]:
    """What a shard recorded (host, pid, results so far); empty if it recorded nothing."""
    path = shard_record_path(out_dir, shard)
    return json.loads(path.read_text()) if path.is_file() else {}


def load_shard_results(out_dir: Path, shard: str) -> list[RowResult]:
    return [RowResult(**entry) for entry in shard_record(out_dir, shard).get("results", [])]
