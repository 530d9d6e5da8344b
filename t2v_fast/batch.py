"""Bulk rendering of manifest rows: plain functions that the Prefect flows orchestrate, testable without Prefect.

A row is done when each of its videos has an MP4 and a sidecar whose request (prompt, negative prompt, seed, every
parameter) and model match; the sidecar is written last and atomically, so a done row is never half-written and
re-running a night never renders it again.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_path
from .errors import NumericalError, UserError
from .manifest import Manifest, ManifestRow
from .pipeline import TextToVideoZeroPipeline

logger = logging.getLogger("t2v_fast.batch")

# Failures worth another try: the file system, the network, GPU memory taken by someone else. Anything else is
# deterministic for the same input (bad values, the NaN guard, a bug) and retrying only wastes the night.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (OSError, TimeoutError, torch.cuda.OutOfMemoryError)
STATUSES = ("done", "skipped", "failed", "rejected")
RESULT_COLUMNS = ("id", "row", "status", "reason", "seconds", "output", "attempts")


@dataclass
class RowResult:
    id: str
    row: int
    status: str
    reason: str = ""
    seconds: float = 0.0
    outputs: list[str] = field(default_factory=list)
    attempts: int = 0


def output_paths(out_dir: Path, row: ManifestRow) -> list[Path]:
    """`OUT/<id>.mp4`, or `OUT/<id>-<k>.mp4` for each of several videos per prompt."""
    if row.videos_per_prompt == 1:
        return [out_dir / f"{row.id}.mp4"]
    return [out_dir / f"{row.id}-{k}.mp4" for k in range(row.videos_per_prompt)]


def is_done(out_dir: Path, row: ManifestRow, model_id: str) -> bool:
    """Every video of the row exists, with a sidecar recording this very request and model."""
    for k, path in enumerate(output_paths(out_dir, row)):
        sidecar = path.with_suffix(".json")
        if not (path.is_file() and sidecar.is_file()):
            return False
        try:
            meta = json.loads(sidecar.read_text())
        except (OSError, json.JSONDecodeError):
            return False
        recorded = (meta.get("prompt"), meta.get("negative_prompt"), meta.get("seed"), meta.get("params"))
        if recorded != (row.prompt, row.negative_prompt, row.seed + k, row.params):
            return False
        if meta.get("model", {}).get("id") != model_id:
            return False
    return True


def batch_groups(rows: Sequence[ManifestRow], max_videos: int) -> list[list[ManifestRow]]:
    """Rows that share every setting but prompt and seed can denoise as one UNet batch, up to `max_videos` videos."""
    groups: dict[str, list[list[ManifestRow]]] = {}
    for row in rows:
        key = json.dumps([row.params, row.videos_per_prompt], sort_keys=True)
        batches = groups.setdefault(key, [[]])
        if sum(r.videos_per_prompt for r in batches[-1]) + row.videos_per_prompt > max_videos and batches[-1]:
            batches.append([])
        batches[-1].append(row)
    return [batch for batches in groups.values() for batch in batches]


def _render(pipeline: TextToVideoZeroPipeline, rows: Sequence[ManifestRow], out_dir: Path) -> list[list[str]]:
    """Generate and save the videos of `rows` as one batch; the output paths of each row."""
    seeds = [row.seed + k for row in rows for k in range(row.videos_per_prompt)]
    result = pipeline.generate(
        [row.prompt for row in rows],
        negative_prompt=[row.negative_prompt for row in rows],
        seed=seeds,
        videos_per_prompt=rows[0].videos_per_prompt,
        progress=False,
        **rows[0].params,
    )
    videos = iter(result if isinstance(result, list) else [result])
    outputs = []
    for row in rows:
        paths = output_paths(out_dir, row)
        for path in paths:
            next(videos).save(path)
        outputs.append([str(p) for p in paths])
    return outputs


def render_rows(
    pipeline: TextToVideoZeroPipeline,
    rows: Sequence[ManifestRow],
    out_dir: Path,
    retries: int = 2,
    backoff_seconds: float = 2.0,
    max_batch_videos: int = 4,
    on_result: Callable[[RowResult], None] | None = None,
) -> list[RowResult]:
    """Render rows, batching where settings agree. A failing batch falls back to its rows one by one, so one bad row
    never costs the others; transient errors are retried with exponential backoff, deterministic ones are not."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results: list[RowResult] = []

    def finish(result: RowResult) -> None:
        results.append(result)
        if on_result:
            on_result(result)

    for group in batch_groups(rows, max_batch_videos):
        started = time.perf_counter()
        if len(group) > 1:
            try:
                outputs = _render(pipeline, group, out_dir)
            except Exception as error:  # any failure: isolate it by rendering the rows one by one
                logger.warning("batch of %d rows failed (%s); rendering them one by one", len(group), error)
            else:
                seconds = (time.perf_counter() - started) / len(group)
                for row, paths in zip(group, outputs, strict=True):
                    finish(RowResult(row.id, row.row, "done", seconds=round(seconds, 3), outputs=paths, attempts=1))
                continue
        for row in group:
            if len(group) > 1 and is_done(out_dir, row, pipeline.backend.info.model_id):  # saved before the failure
                seconds = round(time.perf_counter() - started, 3)
                paths = [str(p) for p in output_paths(out_dir, row)]
                finish(RowResult(row.id, row.row, "done", seconds=seconds, outputs=paths, attempts=1))
                continue
            finish(render_one(pipeline, row, out_dir, retries, backoff_seconds))
    return results


def render_one(
    pipeline: TextToVideoZeroPipeline, row: ManifestRow, out_dir: Path, retries: int, backoff_seconds: float
) -> RowResult:
    started = time.perf_counter()
    for attempt in range(1, retries + 2):
        try:
            paths = _render(pipeline, [row], out_dir)[0]
            return RowResult(
                row.id,
                row.row,
                "done",
                seconds=round(time.perf_counter() - started, 3),
                outputs=paths,
                attempts=attempt,
            )
        except (UserError, NumericalError) as error:
            reason = f"{type(error).__name__}: {error}"
        except TRANSIENT_ERRORS as error:
            reason = f"{type(error).__name__}: {error}"
            if attempt <= retries:
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
        (r.id, r.row, r.status, r.reason, r.seconds, ";".join(r.outputs), r.attempts)
        for r in sorted(by_row.values(), key=lambda r: r.row)
    ]
    _write_csv(out_dir / "results.csv", RESULT_COLUMNS, lines)
    _write_csv(
        out_dir / "rejected.csv",
        ("row", "column", "problem"),
        ((p.row, p.column, p.message) for p in manifest.problems),
    )


def remove_stale_temporaries(out_dir: Path) -> list[Path]:
    """Temporary files a killed run left behind (`.NAME.<uuid>.tmp`); only called when no render is running."""
    stale = list(out_dir.glob(".*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


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


def load_shard_results(out_dir: Path, shard: str) -> list[RowResult]:
    path = shard_record_path(out_dir, shard)
    return [RowResult(**entry) for entry in json.loads(path.read_text())["results"]] if path.is_file() else []
