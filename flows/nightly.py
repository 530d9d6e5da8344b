"""`nightly`: validate a manifest, skip finished rows, fan shards out to GPU workers, and report every row.

Telling a dead node from a slow one. The night watches three signs of life of every shard run it launched:

- the shard's heartbeat file, touched every quarter lease by a dedicated beater process with real-time priority
  (`t2v_fast.bulk.claims.Heartbeat`), so a busy CPU or a render holding the GIL does not make it late;
- the heartbeat of the shard's Prefect worker to the server (`Worker.last_heartbeat_time` of the work pool, every
  `PREFECT_WORKER_HEARTBEAT_SECONDS`): a power loss, a kernel panic or the OOM killer taking the worker stops it;
- the flow run's state: a worker that is alive reports its process's death (CRASHED) by itself.

A run is taken for dead only when the heartbeat file is silent for a lease *and* the worker for a lease or two of its
beats, whichever is longer (`dead_reason`); a run silent for `HUNG_LEASES` leases is hung even with a live worker.
Silence is measured on this flow's own clock from when a sign was seen to change, so clock skew between nodes, the
file server and the Prefect server does not matter. Worst-case detection (`worst_detection_seconds`):
`max(lease, 2 * worker heartbeat) + 2 * POLL_SECONDS`, e.g. 64 s with the defaults (lease 60 s, worker 30 s), 14 s
with a lease of 8 s and workers beating every 5 s.

Prefect's own flow-run heartbeats (`PREFECT_FLOWS_HEARTBEAT_FREQUENCY`, formerly `PREFECT_RUNNER_HEARTBEAT_FREQUENCY`)
with the documented zombie-flow automation (no `prefect.flow-run.heartbeat` event for a while: set Crashed) are not
used for the decision: their frequency is at least 30 s in Prefect 3.8 (the documented automation waits 90 s),
they are sent by a thread of the rendering process (the same starvation our old heartbeat thread had), and the
automation only marks a run CRASHED, whereas the night must also move the rows. Enabling them is harmless: a run they
mark CRASHED ends its watch like any other final state.

A false alarm (a node frozen longer than that, then alive again) is told apart: the run taken for dead keeps being
watched; once it beats again, the night waits for it to end, reports it as a false alarm with how long its heartbeat
was silent, and counts every row it rendered as `done` (`merge_night`); the row claims let only one of it and its
relaunch render each row.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast
from uuid import UUID

from prefect import flow, get_client, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.runtime import flow_run
from prefect.states import Crashed

from flows.render_shard import render_shard
from t2v_fast.bulk.claims import DEFAULT_LEASE_SECONDS
from t2v_fast.bulk.manifest import ManifestRow, parse_manifest
from t2v_fast.bulk.qc import QcThresholds
from t2v_fast.bulk.rendering import (
    RowResult,
    count_statuses,
    is_done,
    load_shard_results,
    output_paths,
    qc_summary,
    rendered_elsewhere,
    rendered_result,
    shard_heartbeat_path,
    shard_record,
    split_done,
    write_reports,
)
from t2v_fast.core.params import ParamRequest
from t2v_fast.core.video import unwritable
from t2v_fast.loading import describe_model

RENDER_SHARD_DEPLOYMENT = "render-shard/render-shard"
FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
POLL_SECONDS = 2.0
# A worker took the run (PENDING) and is starting its process: with its worker silent too, imports and start-up get
# this many leases before the run must be RUNNING; a RUNNING shard beats from its first line.
STARTUP_LEASES = 4
# A shard silent this many leases while its worker still beats is hung (a stuck mount, a deadlock): taken as dead too.
HUNG_LEASES = 10
MAX_RELAUNCHES = 2
# A worker that does not say how often it beats: Prefect's default `PREFECT_WORKER_HEARTBEAT_SECONDS`.
DEFAULT_WORKER_HEARTBEAT_SECONDS = 30.0


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
    out: Path, shard: Shard, model_id: str, thresholds: QcThresholds, trust_outputs: bool = True
) -> tuple[list[RowResult], list[ManifestRow]]:
    """Results of the rows a shard run finished (from its record, or from the outputs when it died before recording
    them: `trust_outputs`), and the rows it never finished."""
    recorded = {r.id: r for r in load_shard_results(out, shard.name)}
    finished, unfinished = [], []
    for row in shard.rows:
        if row.id in recorded:
            finished.append(recorded[row.id])
        elif trust_outputs and is_done(out, row, model_id):
            finished.append(rendered_result(out, row, "done", thresholds))
        else:
            unfinished.append(row)
    return finished, unfinished


def _shard_outcome(out: Path, shard: Shard, model_id: str, thresholds: QcThresholds, state: str) -> list[RowResult]:
    """Per-row results of a finished shard run; rows it never reached fail with its state."""
    finished, unfinished = _recorded_outcome(out, shard, model_id, thresholds, trust_outputs=state != "COMPLETED")
    reason = f"shard run {state.lower()} before this row finished"
    return finished + [RowResult(row.id, row.row, "failed", reason) for row in unfinished]


RANK = {"done": 0, "skipped": 1, "failed": 2}


def merge_night(outcomes: list[list[RowResult]]) -> list[RowResult]:
    """One result per row from every shard run of one night (in launch order), whatever the timing.

    A row any shard of this night rendered is `done` (the shard taken for dead by a false alarm, or its relaunch:
    claims let only one of them render it); else `skipped` when another run, working at the same time, rendered it;
    else the failure of the last shard that tried it.
    """
    best: dict[str, RowResult] = {}
    for outcome in outcomes:
        for result in outcome:
            kept = best.get(result.id)
            if kept is None or (kept.status != "done" and RANK.get(result.status, 3) <= RANK.get(kept.status, 3)):
                best[result.id] = result
    return list(best.values())


def dead_reason(
    state: str, beat_silent: float, worker_silent: float, lease: float, worker_heartbeat: float
) -> str | None:
    """Why a shard run is taken for dead, or None while any sign of life is recent enough.

    The signs: the shard's heartbeat file (`beat_silent`: seconds since it last changed), its Prefect worker's
    heartbeat to the server (`worker_silent`), and the run's state. A node is dead when both are silent: the
    heartbeat for a lease, the worker for a lease or two of its beats, whichever is longer; a starting (PENDING) run
    gets `STARTUP_LEASES` leases. A run silent for `HUNG_LEASES` leases is hung even if its worker still beats.
    """
    worker_limit = max(lease, 2 * worker_heartbeat)
    beat_limit = lease * (STARTUP_LEASES if state == "PENDING" else 1)
    if beat_silent >= beat_limit and worker_silent >= worker_limit:
        return f"stopped: no heartbeat for {beat_silent:.0f} s, and none from its worker for {worker_silent:.0f} s"
    if beat_silent >= lease * HUNG_LEASES:
        return f"hung: no heartbeat for {beat_silent:.0f} s although its worker is alive"
    return None


def worst_detection_seconds(lease: float, worker_heartbeat: float) -> float:
    """The longest a dead RUNNING node goes unnoticed: both signals silent long enough, seen at the polls."""
    return max(lease, 2 * worker_heartbeat) + 2 * POLL_SECONDS


@dataclass
class Watched:
    """One shard run as the night watches it. Times are the watcher's own clock (`time.monotonic`) when a sign of
    life was seen to change, so the clocks of the file server, the Prefect server and the nodes never matter."""

    shard: Shard
    run_id: UUID
    beat_mtime: float | None = None
    beat_seen: float = field(default_factory=time.monotonic)
    node: str = ""
    declared: str = ""  # why it was taken for dead
    late_seconds: float = 0.0  # a false alarm: how long its heartbeat was silent, by the beats' own clock
    alive_again: bool = False
    state: str | None = None

    def enter(self, state: str | None) -> None:
        """Silence counts from when the run entered its state: a run waiting for a worker (SCHEDULED) never beats."""
        if state != self.state:
            self.state, self.beat_seen = state, max(self.beat_seen, time.monotonic())

    def look(self, out: Path) -> float:
        """Seconds since the heartbeat file last changed (or since the watch began); notes a beat after an alarm."""
        beat = shard_heartbeat_path(out, self.shard.name)
        try:
            mtime = beat.stat().st_mtime
        except OSError:
            mtime = None
        if mtime is not None and mtime != self.beat_mtime:
            if self.declared and self.beat_mtime is not None and not self.alive_again:
                self.alive_again, self.late_seconds = True, mtime - self.beat_mtime
            self.beat_mtime, self.beat_seen = mtime, time.monotonic()
        return time.monotonic() - self.beat_seen


@dataclass
class WorkerBeats:
    """When each worker of the pool was last seen to beat (its `last_heartbeat_time` changing), by our clock."""

    seen: dict[str, tuple[Any, float, float]] = field(default_factory=dict)  # name -> (last beat, seen at, interval)

    def update(self, workers: list[Any]) -> None:
        now = time.monotonic()
        for worker in workers:
            interval = float(worker.heartbeat_interval_seconds or DEFAULT_WORKER_HEARTBEAT_SECONDS)
            last = self.seen.get(worker.name)
            if last is None or last[0] != worker.last_heartbeat_time:
                self.seen[worker.name] = (worker.last_heartbeat_time, now, interval)

    def silent(self, name: str | None) -> tuple[float, float]:
        """Seconds since the worker last beat (infinite for a worker never seen), and its heartbeat interval; for a
        run no worker has labelled yet (just PENDING), the freshest worker's."""
        if name is None and self.seen:
            name = min(self.seen, key=lambda n: time.monotonic() - self.seen[n][1])
        if name not in self.seen:
            return float("inf"), DEFAULT_WORKER_HEARTBEAT_SECONDS
        _, seen_at, interval = self.seen[name]
        return time.monotonic() - seen_at, interval


class ShardRuns:
    """The render-shard deployment runs of one night: launched once each, watched until every one has ended.

    A run whose worker reports a final state ends with it. A run is taken for a dead node (power loss, kernel panic,
    OOM killer taking the worker) by `dead_reason`: its heartbeat file and its worker's heartbeat to the Prefect
    server both silent. It is marked CRASHED, naming the node, and its unfinished rows are launched again as a new
    shard for the live nodes, the same night. A node that was only slow (a stalled mount, a paused VM) and beats
    again is a false alarm: its claims kept both runs from rendering a row twice, the night waits for it to end, and
    every row it rendered counts as `done` (`merge_night`). Worst-case detection: `worst_detection_seconds`.
    """

    def __init__(self, out: Path, model_id: str, parameters: dict[str, Any], progress):
        """`parameters` of every render-shard run; their lease and QC thresholds also rule the watching."""
        self.out, self.model_id, self.parameters = out, model_id, parameters
        self.lease_seconds = parameters["lease_seconds"]
        self.thresholds = QcThresholds(**parameters["qc_thresholds"])
        self.progress, self.logger = progress, get_run_logger()
        self.pending: dict[str, Watched] = {}
        self.suspects: dict[str, Watched] = {}  # taken for dead, watched still in case they beat again
        self.workers = WorkerBeats()
        self.launched = 0
        self.outcomes: list[list[RowResult]] = []
        self.alarms: list[Watched] = []

    def launch(self, shard: Shard) -> None:
        """One run per shard, keyed so that a retried night reuses the runs it launched."""
        # Prefect's sync/async dispatch: called outside an event loop, it returns the flow run, not a coroutine.
        run = cast(
            FlowRun,
            run_deployment(
                RENDER_SHARD_DEPLOYMENT,
                parameters={**self.parameters, "rows": [r.to_json() for r in shard.rows], "shard": shard.name},
                timeout=0,
                idempotency_key=f"{flow_run.get_id()}:{shard.name}",
                flow_run_name=shard.name,
            ),
        )
        self.pending[shard.name] = Watched(shard, run.id)
        self.launched += 1
        self.logger.info("launched %s (%d rows) as flow run %s", shard.name, len(shard.rows), run.id)

    def wait(self) -> list[RowResult]:
        """Watch until every run ended, then wait for the false alarms to end too; one result per row."""
        with get_client(sync_client=True) as client:
            while self.pending or any(w.alive_again for w in self.suspects.values()):
                time.sleep(POLL_SECONDS)
                watched = [*self.pending.values(), *self.suspects.values()]
                ids = FlowRunFilter(id=FlowRunFilterId(any_=[w.run_id for w in watched]))
                runs = {run.id: run for run in client.read_flow_runs(flow_run_filter=ids)}
                pools = {run.work_pool_name for run in runs.values() if run.work_pool_name}
                for pool in pools:
                    self.workers.update(client.read_workers_for_work_pool(pool, limit=200))
                for watch in list(self.pending.values()):
                    self._check(client, runs.get(watch.run_id), watch)
                for watch in list(self.suspects.values()):
                    self._check_suspect(runs.get(watch.run_id), watch)
        return merge_night(self.outcomes)

    def _check(self, client: Any, run: Any, watch: Watched) -> None:
        state = run.state.type.value if run is not None and run.state is not None else None
        watch.enter(state)
        silent = watch.look(self.out)
        if state in FINAL_STATES:
            self._ended(watch, _shard_outcome(self.out, watch.shard, self.model_id, self.thresholds, state))
            self.logger.info("%s finished: %s", watch.shard.name, run.state.name)
        elif state in ("PENDING", "RUNNING"):
            worker = run.labels.get("prefect.worker.name")
            worker_silent, interval = self.workers.silent(worker if worker or state == "PENDING" else "")
            if reason := dead_reason(state, silent, worker_silent, self.lease_seconds, interval):
                watch.node = worker or shard_record(self.out, watch.shard.name).get("host") or "unknown node"
                self._dead(client, watch, reason)

    def _check_suspect(self, run: Any, watch: Watched) -> None:
        """A run taken for dead: if it beats again it was a false alarm, and it ends when its run does (or when it
        falls silent for a lease again); its record then tells what it rendered."""
        state = run.state.type.value if run is not None and run.state is not None else None
        silent = watch.look(self.out)
        if not watch.alive_again:
            return
        if watch not in self.alarms:
            self.alarms.append(watch)
            self.logger.warning(
                "false alarm: %s on %s is alive; its heartbeat was silent for %.1f s (lease %.0f s)",
                watch.shard.name,
                watch.node,
                watch.late_seconds,
                self.lease_seconds,
            )
        ended = state in FINAL_STATES and not (state == "CRASHED" and run.state.message == watch.declared)
        if ended or silent >= self.lease_seconds:
            del self.suspects[watch.shard.name]
            outcome = _shard_outcome(self.out, watch.shard, self.model_id, self.thresholds, state or "CRASHED")
            self.outcomes.append(outcome)

    def _ended(self, watch: Watched, outcome: list[RowResult]) -> None:
        del self.pending[watch.shard.name]
        self.outcomes.append(outcome)
        update_progress_artifact(self.progress, 100 * (self.launched - len(self.pending)) / self.launched)

    def _dead(self, client: Any, watch: Watched, reason: str) -> None:
        shard = watch.shard
        watch.declared = f"node {watch.node} {reason} ({shard.name})"
        self.logger.warning("%s; its unfinished rows go to the other nodes", watch.declared)
        self.suspects[shard.name] = watch
        finished, unfinished = _recorded_outcome(self.out, shard, self.model_id, self.thresholds)
        relaunch = shard.relaunched(unfinished)
        if unfinished and relaunch.attempt <= MAX_RELAUNCHES:
            self._ended(watch, finished)
            self.launch(relaunch)  # first: the rows wait for a live node as little as possible
        else:
            failure = f"{watch.declared}; not relaunched again after {shard.attempt} relaunches"
            self._ended(watch, finished + [RowResult(r.id, r.row, "failed", failure) for r in unfinished])
        client.set_flow_run_state(watch.run_id, Crashed(message=watch.declared), force=True)

    def report(self) -> list[str]:
        """Markdown lines on the nodes taken for dead: dead, or false alarms once seen alive again."""
        lines = []
        for watch in self.alarms:
            lines.append(
                f"False alarm: {watch.shard.name} on {watch.node} was taken for dead ({watch.declared}), but it was"
                f" alive: its heartbeat was silent for {watch.late_seconds:.1f} s (lease {self.lease_seconds:.0f} s)."
            )
        for watch in self.suspects.values():
            lines.append(f"Dead node: {watch.declared}; its unfinished rows were launched again.")
        return lines


def _run_shards_in_process(
    shards: list[Shard], out: Path, model_id: str, shard_parameters: dict[str, Any], progress
) -> list[RowResult]:
    results: list[RowResult] = []
    thresholds = QcThresholds(**shard_parameters["qc_thresholds"])
    for done, shard in enumerate(shards, start=1):
        returned: list[RowResult] = []
        try:
            returned = [
                RowResult(**r)
                for r in render_shard(rows=[r.to_json() for r in shard.rows], shard=shard.name, **shard_parameters)
            ]
            state = "COMPLETED"
        except Exception as error:  # e.g. the model cannot load: every row of the shard fails with the reason
            get_run_logger().error("%s failed: %s", shard.name, error)
            state = "FAILED"
        # What the shard returned is the truth when its record could not be saved (a full disk).
        results += merge_night([_shard_outcome(out, shard, model_id, thresholds, state), returned])
        update_progress_artifact(progress, 100 * done / len(shards))
    return results


def _summary(results: list[RowResult], counts: dict[str, int], seconds: float, alarms: list[str]) -> str:
    gpu_seconds = sum(r.seconds for r in results if r.status == "done")
    videos_per_hour = counts["done"] * 3600 / seconds if seconds else 0.0
    lines = ["| status | rows |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in counts.items())]
    lines += ["", f"Wall time {seconds:.0f} s, GPU time {gpu_seconds:.0f} s, {videos_per_hour:.1f} rendered rows/hour."]
    if elsewhere := rendered_elsewhere(results):
        lines += [f"{elsewhere} skipped rows were rendered by another run working at the same time."]
    lines += [qc_summary(results) + "."]
    return "\n".join([*lines, "", *alarms] if alarms else lines)


@flow(name="nightly", log_prints=True)
def nightly(
    manifest: str,
    out_dir: str,
    model: str = "tiny-random",
    backend: str = "torch",
    device: str | None = None,
    dtype: str | None = None,
    shard_size: int = 16,
    batch_videos: int = 4,
    use_deployments: bool = False,
    defaults: dict[str, Any] | None = None,
    base_seed: int = 0,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    qc_thresholds: dict[str, float] | None = None,
    controlnet: str | None = None,
    depth_model: str | None = None,
) -> dict[str, int]:
    """Render every valid row of `manifest` into `out_dir` once; returns the count of rows per status.

    `model` is a preset, a diffusers folder, a hub id or an engine directory (for onnxruntime and tensorrt), as
    every node sees it; `controlnet` (a preset, folder or hub id, likewise) renders the rows with a `control` video
    as guided video, their depth annotator running `depth_model`. `batch_videos` caps the videos denoised together
    on a GPU. `defaults` are generation parameters by name (`t2v-fast batch --help` lists them) for rows that do not
    set them; a row without a seed gets `base_seed + row - 2`. `lease_seconds` bounds how long a dead node holds
    work: its row claims expire after that long without a heartbeat, and its shard is taken as dead once its worker
    is silent too (see the module's docstring for the worst-case detection time). `qc_thresholds` (`frozen_mad`,
    `flicker_ssim`) decide which videos QC marks as frozen or flickering in `results.csv`.
    """
    started = time.monotonic()
    logger = get_run_logger()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    card = describe_model(model, controlnet=controlnet)
    parsed = parse_manifest(manifest, ParamRequest.of(**(defaults or {})), card, base_seed, depth_model)
    for warning in parsed.warnings:
        logger.warning("%s", warning)
    for problem in parsed.problems:
        logger.warning("rejected: %s", problem)
    thresholds = QcThresholds(**(qc_thresholds or {}))
    todo, results = split_done(parsed.rows, out, card.model_id, card.weights_sha256, thresholds)
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
        "controlnet": controlnet,
        "depth_model": depth_model,
        "backend": backend,
        "device": device,
        "dtype": dtype,
        "batch_videos": batch_videos,
        "lease_seconds": lease_seconds,
        "qc_thresholds": asdict(thresholds),
    }
    alarms: list[str] = []
    if shards and (why := unwritable(out)):  # nothing to launch: every row fails with its file and the reason
        logger.error("output folder %s: %s", out, why)
        results += [RowResult(r.id, r.row, "failed", f"cannot write {output_paths(out, r)[0]}: {why}") for r in todo]
    elif shards and use_deployments:
        runs = ShardRuns(out, card.model_id, shard_parameters, progress)
        for shard in shards:
            runs.launch(shard)
        results += runs.wait()
        alarms = runs.report()
    elif shards:
        results += _run_shards_in_process(shards, out, card.model_id, shard_parameters, progress)

    counts = count_statuses(parsed, results)
    problems = [r for r in results if r.status == "failed"]
    table = [{"row": r.row, "id": r.id, "status": r.status, "reason": r.reason} for r in problems]
    table += [
        {"row": p.row, "id": parsed.rejected_ids[p.row], "status": "rejected", "reason": str(p)}
        for p in parsed.problems
    ]
    if table:
        create_table_artifact(table, key="failed-and-rejected-rows", description="Rows that did not render")
    create_markdown_artifact(_summary(results, counts, time.monotonic() - started, alarms), key="nightly-summary")
    try:  # after the artifacts, which the Prefect server keeps even when the output folder cannot be written
        write_reports(out, parsed, results)
    except OSError as error:
        raise OSError(error.errno, f"cannot write the reports into {out}: {error.strerror or error}") from error
    return counts
