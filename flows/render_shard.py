"""`render-shard`: render one shard of a night's manifest on one GPU node, loading the pipeline once.

One shard per GPU at a time is the worker's job: each GPU node runs one worker on the `render` queue with `--limit 1`.
While it runs, a dedicated beater process with real-time priority (`t2v_fast.bulk.claims.Heartbeat`) touches the shard's
heartbeat file every quarter lease, so a render that keeps the CPUs busy cannot make it late. The nightly flow takes
a shard for a dead node only when that heartbeat and its worker's heartbeat to the Prefect server are both silent
(`flows.nightly.dead_reason`), and gives its unfinished rows to another node.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, cast
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from t2v_fast.bulk.claims import DEFAULT_LEASE_SECONDS, Claims, Heartbeat
from t2v_fast.bulk.manifest import ManifestRow
from t2v_fast.bulk.qc import QcThresholds
from t2v_fast.bulk.rendering import RowResult, render_rows, save_shard_results, shard_heartbeat_path
from t2v_fast.loading import load_pipeline


@flow(name="render-shard", log_prints=True)
def render_shard(
    rows: list[dict[str, Any]],
    out_dir: str,
    shard: str,
    model: str = "tiny-random",
    backend: str = "torch",
    device: str | None = None,
    dtype: str | None = None,
    batch_videos: int = 4,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    qc_thresholds: dict[str, float] | None = None,
    controlnet: str | None = None,
    depth_model: str | None = None,
) -> list[dict[str, Any]]:
    """Render `rows` (manifest rows as dicts) into `out_dir`; per-row results, also saved as the shard goes.

    Rows with equal settings denoise together, up to `batch_videos` videos per UNet batch (memory vs. throughput).
    Each row is claimed before it renders, with a lease of `lease_seconds`, so no other run renders it too.
    `qc_thresholds` (`frozen_mad`, `flicker_ssim`) decide which videos QC marks as frozen or flickering.
    `controlnet` and `depth_model` are the night's, for its guided rows.
    """
    out = Path(out_dir)
    logger = get_run_logger()
    heartbeat = Heartbeat(shard_heartbeat_path(out, shard), lease_seconds / 4)
    claims = Claims(out, run=f"shard {shard}", lease_seconds=lease_seconds)
    try:
        pipeline = load_pipeline(
            model, controlnet=controlnet, depth_model=depth_model, backend=backend, device=device, dtype=dtype
        )
        # Prefect's sync/async dispatch: called outside an event loop, it returns the artifact's id, not a coroutine.
        progress = cast(UUID, create_progress_artifact(0.0, description=f"{shard}: 0 of {len(rows)} rows"))
        results: list[RowResult] = []

        def record(result: RowResult) -> None:
            results.append(result)
            try:
                save_shard_results(out, shard, results)
            except OSError as error:  # a full disk: the rows still fail or finish; the flow's result says which
                logger.warning("%s: cannot save the shard's record: %s", shard, error)
            done = f"{shard}: {len(results)} of {len(rows)}"
            update_progress_artifact(progress, 100 * len(results) / len(rows), done)
            print(f"row {result.row} ({result.id}): {result.status} {result.reason}".rstrip())

        manifest_rows = [ManifestRow.from_json(row) for row in rows]
        render_rows(
            pipeline,
            manifest_rows,
            out,
            max_batch_videos=batch_videos,
            on_result=record,
            claims=claims,
            qc_thresholds=QcThresholds(**(qc_thresholds or {})),
        )
        return [asdict(r) for r in results]
    finally:
        claims.close()
        heartbeat.stop()
