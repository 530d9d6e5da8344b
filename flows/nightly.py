"""`nightly`: validate a manifest, skip finished rows, fan shards out to GPU workers, and report every row."""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_client, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.deployments import run_deployment
from prefect.runtime import flow_run

from flows.render_shard import render_shard
from t2v_fast.batch import (
    RowResult,
    is_done,
    load_shard_results,
    output_paths,
    remove_stale_temporaries,
    write_reports,
)
from t2v_fast.manifest import ManifestRow, parse_manifest
from t2v_fast.models import describe_model
from t2v_fast.params import GenerationParams

RENDER_SHARD_DEPLOYMENT = "render-shard/render-shard"
FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@dataclass(frozen=True)
class Shard:
    name: str
    rows: list[ManifestRow]


def make_shards(rows: list[ManifestRow], size: int) -> list[Shard]:
    """Consecutive shards of `size` rows, named by their content so a retried night names them the same."""
    shards = []
    for start in range(0, len(rows), size):
        part = rows[start : start + size]
        digest = hashlib.sha256(" ".join(r.id for r in part).encode()).hexdigest()[:10]
        shards.append(Shard(f"shard-{start // size:04d}-{digest}", part))
    return shards


def _shard_outcome(out: Path, shard: Shard, model_id: str, state: str) -> list[RowResult]:
    """Per-row results of a finished shard run, from what it recorded; rows it never reached fail with its state."""
    recorded = {r.id: r for r in load_shard_results(out, shard.name)}
    outcome = []
    for row in shard.rows:
        if row.id in recorded:
            outcome.append(recorded[row.id])
        elif is_done(out, row, model_id):  # finished, but the run died before recording it
            outcome.append(RowResult(row.id, row.row, "done", outputs=[str(p) for p in output_paths(out, row)]))
        else:
            outcome.append(RowResult(row.id, row.row, "failed", f"shard run {state.lower()} before this row finished"))
    return outcome


def _run_shards_as_deployments(
    shards: list[Shard], out: Path, model_id: str, shard_parameters: dict[str, Any], progress
):
    """One `render-shard` deployment run per shard, keyed so that a retried night reuses the runs it launched."""
    logger = get_run_logger()
    runs = {}
    for shard in shards:
        parameters = {**shard_parameters, "rows": [asdict(r) for r in shard.rows], "shard": shard.name}
        run = run_deployment(
            RENDER_SHARD_DEPLOYMENT,
            parameters=parameters,
            timeout=0,
            idempotency_key=f"{flow_run.get_id()}:{shard.name}",
            flow_run_name=shard.name,
        )
        runs[shard.name] = run.id
        logger.info("launched %s as flow run %s", shard.name, run.id)
    results: list[RowResult] = []
    pending = dict(runs)
    with get_client(sync_client=True) as client:
        while pending:
            time.sleep(2)
            ids = FlowRunFilter(id=FlowRunFilterId(any_=list(pending.values())))
            states = {run.id: run.state for run in client.read_flow_runs(flow_run_filter=ids)}
            for shard in [s for s in shards if s.name in pending]:
                state = states.get(pending[shard.name])
                if state is not None and state.type.value in FINAL_STATES:
                    del pending[shard.name]
                    results += _shard_outcome(out, shard, model_id, state.type.value)
                    update_progress_artifact(progress, 100 * (len(shards) - len(pending)) / len(shards))
                    logger.info("%s finished: %s", shard.name, state.name)
    return results


def _run_shards_in_process(shards: list[Shard], out: Path, model_id: str, shard_parameters: dict[str, Any], progress):
    results: list[RowResult] = []
    for done, shard in enumerate(shards, start=1):
        try:
            render_shard(rows=[asdict(r) for r in shard.rows], shard=shard.name, **shard_parameters)
            state = "COMPLETED"
        except Exception as error:  # e.g. the model cannot load: every row of the shard fails with the reason
            get_run_logger().error("%s failed: %s", shard.name, error)
            state = "FAILED"
        results += _shard_outcome(out, shard, model_id, state)
        update_progress_artifact(progress, 100 * done / len(shards))
    return results


def _summary(results: list[RowResult], counts: dict[str, int], seconds: float) -> str:
    gpu_seconds = sum(r.seconds for r in results if r.status == "done")
    videos_per_hour = counts["done"] * 3600 / seconds if seconds else 0.0
    lines = ["| status | rows |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in counts.items())]
    lines += ["", f"Wall time {seconds:.0f} s, GPU time {gpu_seconds:.0f} s, {videos_per_hour:.1f} rendered rows/hour."]
    return "\n".join(lines)


@flow(name="nightly", log_prints=True)
def nightly(
    manifest: str,
    out_dir: str,
    model: str = "tiny-random",
    backend: str = "torch",
    engines: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    shard_size: int = 16,
    batch_videos: int = 4,
    use_deployments: bool = False,
    defaults: dict[str, Any] | None = None,
    base_seed: int = 0,
) -> dict[str, int]:
    """Render every valid row of `manifest` into `out_dir` once; returns the count of rows per status.

    `batch_videos` caps the videos denoised together on a GPU. `defaults` are generation parameters (frames, steps,
    guidance, height, width, fps, motion_x, motion_y, t0, t1, chunk_size) for rows that do not set them; a row
    without a seed gets `base_seed + row - 2`.
    """
    started = time.monotonic()
    logger = get_run_logger()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec = describe_model(engines or model)
    parsed = parse_manifest(
        manifest,
        GenerationParams(**(defaults or {})),
        spec.scheduler,
        spec.native_size,
        spec.size_multiple,
        base_seed,
        count_tokens=lambda text: len(spec.tokenizer(text).input_ids),
    )
    for warning in parsed.warnings:
        logger.warning("%s", warning)
    for problem in parsed.problems:
        logger.warning("rejected: %s", problem)
    for stale in remove_stale_temporaries(out):
        logger.info("removed %s, left by an interrupted run", stale.name)

    todo, results = [], []
    for row in parsed.rows:
        if is_done(out, row, spec.model_id):
            paths = [str(p) for p in output_paths(out, row)]
            results.append(RowResult(row.id, row.row, "skipped", "already rendered", outputs=paths))
        else:
            todo.append(row)
    shards = make_shards(todo, max(1, shard_size))
    logger.info(
        "%d rows: %d to render in %d shards, %d already done, %d rejected",
        parsed.total_rows,
        len(todo),
        len(shards),
        len(results),
        len(parsed.rejected),
    )
    progress = create_progress_artifact(0.0 if shards else 100.0, description="shards finished")
    shard_parameters = {
        "out_dir": str(out),
        "model": model,
        "backend": backend,
        "engines": engines,
        "device": device,
        "dtype": dtype,
        "batch_videos": batch_videos,
    }
    run_shards = _run_shards_as_deployments if use_deployments else _run_shards_in_process
    if shards:
        results += run_shards(shards, out, spec.model_id, shard_parameters, progress)

    write_reports(out, parsed, results)
    counts = {status: 0 for status in ("done", "skipped", "failed", "rejected")}
    for result in results:
        counts[result.status] += 1
    counts["rejected"] = len(parsed.rejected)
    problems = [r for r in results if r.status == "failed"]
    table = [{"row": r.row, "id": r.id, "status": r.status, "reason": r.reason} for r in problems]
    table += [
        {"row": p.row, "id": parsed.rejected_ids[p.row], "status": "rejected", "reason": str(p)}
        for p in parsed.problems
    ]
    if table:
        create_table_artifact(table, key="failed-and-rejected-rows", description="Rows that did not render")
    create_markdown_artifact(_summary(results, counts, time.monotonic() - started), key="nightly-summary")
    return counts
