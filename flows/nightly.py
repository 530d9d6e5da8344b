"""`nightly`: validate a manifest, skip finished rows, fan shards out to GPU workers, and report every row."""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

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
from prefect.states import Crashed
from t2v_fast.flows.render_shard import render_shard

from t2v_fast.batch import (
    RowResult,
    count_statuses,
    is_done,
    load_shard_results,
    qc_summary,
    rendered_elsewhere,
    rendered_result,
    shard_heartbeat_path,
    shard_record,
    split_done,
    write_reports,
)
from t2v_fast.claims import DEFAULT_LEASE_SECONDS
from t2v_fast.loading import describe_model
from t2v_fast.manifest import ManifestRow, parse_manifest
from t2v_fast.params import GenerationParams
from t2v_fast.qc import QcThresholds

RENDER_SHARD_DEPLOYMENT = "render-shard/render-shard"
FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
POLL_SECONDS = 2.0
# A worker took the run (PENDING) and is starting its process: imports and start-up get this many leases before the
# run must be RUNNING; a RUNNING shard beats from its first line, so one lease of silence means its node is gone.
STARTUP_LEASES = 4
MAX_RELAUNCHES = 2


@dataclass(frozen=True)
class Shard:
    name: str
    rows: list[ManifestRow]
    attempt: int = 0  # how many times these rows were launched again after a node died

    def relaunched(self, rows: list[ManifestRow]) -> Shard:
        base = self.name.split("-relaunch")[0]
        return Shard(f"{base}-relaunch{self.attempt + 1}", rows, self.attempt + 1)


def make_shards(rows: list[ManifestRow], size: int) -> list[Shard]:
    """Consecutive shards of `size` rows, named by their content so a retried night names them the same."""
    shards = []
    for start in range(0, len(rows), size):
        part = rows[start : start + size]
        digest = hashlib.sha256(" ".join(r.id for r in part).encode()).hexdigest()[:10]
        shards.append(Shard(f"shard-{start // size:04d}-{digest}", part))
    return shards


def _recorded_outcome(
    out: Path, shard: Shard, model_id: str, thresholds: QcThresholds
) -> tuple[list[RowResult], list[ManifestRow]]:
    """Results of the rows a shard run finished (from its record, or from the outputs when it died before recording
    them), and the rows it never finished."""
    recorded = {r.id: r for r in load_shard_results(out, shard.name)}
    finished, unfinished = [], []
    for row in shard.rows:
        if row.id in recorded:
            finished.append(recorded[row.id])
        elif is_done(out, row, model_id):
            finished.append(rendered_result(out, row, "done", thresholds))
        else:
            unfinished.append(row)
    return finished, unfinished


def _shard_outcome(out: Path, shard: Shard, model_id: str, thresholds: QcThresholds, state: str) -> list[RowResult]:
    """Per-row results of a finished shard run; rows it never reached fail with its state."""
    finished, unfinished = _recorded_outcome(out, shard, model_id, thresholds)
    reason = f"shard run {state.lower()} before this row finished"
    return finished + [RowResult(row.id, row.row, "failed", reason) for row in unfinished]


def _silent_seconds(out: Path, shard: Shard, active_since: float) -> float:
    """Seconds since the shard's last sign of life: its heartbeat, or since it became active if it never beat."""
    beat = shard_heartbeat_path(out, shard.name)
    last = beat.stat().st_mtime if beat.exists() else 0.0
    return time.time() - max(last, active_since)


class ShardRuns:
    """The render-shard deployment runs of one night: launched once each, watched until every one has ended.

    A run whose worker reports a final state ends with it. A RUNNING run without a heartbeat for a whole lease (or a
    PENDING one that does not start within `STARTUP_LEASES` leases) is a dead node (power loss, kernel panic, OOM
    killer taking the worker): it is marked CRASHED, naming the node, and its unfinished rows are launched again as a
    new shard for the live nodes, the same night. Their claims keep a false alarm from rendering a row twice.
    """

    def __init__(self, out: Path, model_id: str, parameters: dict[str, Any], progress):
        """`parameters` of every render-shard run; their lease and QC thresholds also rule the watching."""
        self.out, self.model_id, self.parameters = out, model_id, parameters
        self.lease_seconds = parameters["lease_seconds"]
        self.thresholds = QcThresholds(**parameters["qc_thresholds"])
        self.progress, self.logger = progress, get_run_logger()
        self.pending: dict[str, tuple[Shard, UUID]] = {}
        self.active_since: dict[tuple[str, str], float] = {}  # (shard, state) -> when first seen in that state
        self.launched = 0
        self.results: list[RowResult] = []

    def launch(self, shard: Shard) -> None:
        """One run per shard, keyed so that a retried night reuses the runs it launched."""
        run = run_deployment(
            RENDER_SHARD_DEPLOYMENT,
            parameters={**self.parameters, "rows": [asdict(r) for r in shard.rows], "shard": shard.name},
            timeout=0,
            idempotency_key=f"{flow_run.get_id()}:{shard.name}",
            flow_run_name=shard.name,
        )
        self.pending[shard.name] = (shard, run.id)
        self.launched += 1
        self.logger.info("launched %s (%d rows) as flow run %s", shard.name, len(shard.rows), run.id)

    def wait(self) -> list[RowResult]:
        with get_client(sync_client=True) as client:
            while self.pending:
                time.sleep(POLL_SECONDS)
                ids = FlowRunFilter(id=FlowRunFilterId(any_=[run_id for _, run_id in self.pending.values()]))
                runs = {run.id: run for run in client.read_flow_runs(flow_run_filter=ids)}
                for name, (shard, run_id) in list(self.pending.items()):
                    run = runs.get(run_id)
                    state = run.state.type.value if run is not None and run.state is not None else None
                    if state in FINAL_STATES:
                        outcome = _shard_outcome(self.out, shard, self.model_id, self.thresholds, state)
                        self._ended(shard, outcome)
                        self.logger.info("%s finished: %s", name, run.state.name)
                    elif state in ("PENDING", "RUNNING"):
                        since = self.active_since.setdefault((name, state), time.time())
                        silent = _silent_seconds(self.out, shard, since)
                        if silent >= self.lease_seconds * (STARTUP_LEASES if state == "PENDING" else 1):
                            self._dead(client, run, shard, silent)
        return self.results

    def _ended(self, shard: Shard, outcome: list[RowResult]) -> None:
        del self.pending[shard.name]
        self.results += outcome
        update_progress_artifact(self.progress, 100 * (self.launched - len(self.pending)) / self.launched)

    def _dead(self, client: Any, run: Any, shard: Shard, silent: float) -> None:
        record = shard_record(self.out, shard.name)
        node = run.labels.get("prefect.worker.name") or record.get("host") or "unknown node"
        message = f"node {node} stopped: no heartbeat from {shard.name} for {silent:.0f} s"
        self.logger.warning("%s; its unfinished rows go to the other nodes", message)
        client.set_flow_run_state(run.id, Crashed(message=message), force=True)
        finished, unfinished = _recorded_outcome(self.out, shard, self.model_id, self.thresholds)
        relaunch = shard.relaunched(unfinished)
        if unfinished and relaunch.attempt <= MAX_RELAUNCHES:
            self._ended(shard, finished)
            self.launch(relaunch)
        else:
            reason = f"{message}; not relaunched again after {shard.attempt} relaunches"
            self._ended(shard, finished + [RowResult(r.id, r.row, "failed", reason) for r in unfinished])


def _run_shards_in_process(
    shards: list[Shard], out: Path, model_id: str, shard_parameters: dict[str, Any], progress
) -> list[RowResult]:
    results: list[RowResult] = []
    thresholds = QcThresholds(**shard_parameters["qc_thresholds"])
    for done, shard in enumerate(shards, start=1):
        try:
            render_shard(rows=[asdict(r) for r in shard.rows], shard=shard.name, **shard_parameters)
            state = "COMPLETED"
        except Exception as error:  # e.g. the model cannot load: every row of the shard fails with the reason
            get_run_logger().error("%s failed: %s", shard.name, error)
            state = "FAILED"
        results += _shard_outcome(out, shard, model_id, thresholds, state)
        update_progress_artifact(progress, 100 * done / len(shards))
    return results


def _summary(results: list[RowResult], counts: dict[str, int], seconds: float) -> str:
    gpu_seconds = sum(r.seconds for r in results if r.status == "done")
    videos_per_hour = counts["done"] * 3600 / seconds if seconds else 0.0
    lines = ["| status | rows |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in counts.items())]
    lines += ["", f"Wall time {seconds:.0f} s, GPU time {gpu_seconds:.0f} s, {videos_per_hour:.1f} rendered rows/hour."]
    if elsewhere := rendered_elsewhere(results):
        lines += [f"{elsewhere} skipped rows were rendered by another run working at the same time."]
    lines += [qc_summary(results) + "."]
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
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    qc_thresholds: dict[str, float] | None = None,
) -> dict[str, int]:
    """Render every valid row of `manifest` into `out_dir` once; returns the count of rows per status.

    `batch_videos` caps the videos denoised together on a GPU. `defaults` are generation parameters (frames, steps,
    guidance, height, width, fps, motion_x, motion_y, t0, t1, chunk_size) for rows that do not set them; a row
    without a seed gets `base_seed + row - 2`. `lease_seconds` bounds how long a dead node holds work: its row claims
    expire, and its shard is taken as dead, after that long without a heartbeat. `qc_thresholds` (`frozen_mad`,
    `flicker_ssim`) decide which videos QC marks as frozen or flickering in `results.csv`.
    """
    started = time.monotonic()
    logger = get_run_logger()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec = describe_model(engines or model)
    parsed = parse_manifest(manifest, GenerationParams(**(defaults or {})), spec, base_seed)
    for warning in parsed.warnings:
        logger.warning("%s", warning)
    for problem in parsed.problems:
        logger.warning("rejected: %s", problem)
    thresholds = QcThresholds(**(qc_thresholds or {}))
    todo, results = split_done(parsed.rows, out, spec.model_id, thresholds)
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
        "lease_seconds": lease_seconds,
        "qc_thresholds": asdict(thresholds),
    }
    if shards and use_deployments:
        runs = ShardRuns(out, spec.model_id, shard_parameters, progress)
        for shard in shards:
            runs.launch(shard)
        results += runs.wait()
    elif shards:
        results += _run_shards_in_process(shards, out, spec.model_id, shard_parameters, progress)

    write_reports(out, parsed, results)
    counts = count_statuses(parsed, results)
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
