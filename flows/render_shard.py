"""`render-shard`: render one shard of a night's manifest on one GPU node, loading the pipeline once.

One shard per GPU at a time is the worker's job: each GPU node runs one worker on the `render` queue with `--limit 1`.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from t2v_fast import load_pipeline
from t2v_fast.batch import RowResult, render_rows, save_shard_results
from t2v_fast.manifest import ManifestRow


@flow(name="render-shard", log_prints=True)
def render_shard(
    rows: list[dict[str, Any]],
    out_dir: str,
    shard: str,
    model: str = "tiny-random",
    backend: str = "torch",
    engines: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    batch_videos: int = 4,
) -> list[dict[str, Any]]:
    """Render `rows` (manifest rows as dicts) into `out_dir`; per-row results, also saved as the shard goes.

    Rows with equal settings denoise together, up to `batch_videos` videos per UNet batch (memory vs. throughput).
    """
    out = Path(out_dir)
    pipeline = load_pipeline(engines or model, backend=backend, device=device, dtype=dtype)
    progress = create_progress_artifact(0.0, description=f"{shard}: 0 of {len(rows)} rows")
    results: list[RowResult] = []

    def record(result: RowResult) -> None:
        results.append(result)
        save_shard_results(out, shard, results)
        update_progress_artifact(progress, 100 * len(results) / len(rows), f"{shard}: {len(results)} of {len(rows)}")
        print(f"row {result.row} ({result.id}): {result.status} {result.reason}".rstrip())

    render_rows(pipeline, [ManifestRow(**row) for row in rows], out, max_batch_videos=batch_videos, on_result=record)
    return [asdict(r) for r in results]
