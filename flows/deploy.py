"""Create the `nightly` and `render-shard` deployments on a work pool (the Python equivalent of a prefect.yaml).

    python -m flows.deploy --manifest /shared/prompts.csv --out /shared/videos --timezone Europe/Berlin

Both deployments run the flows from the folder this module is installed in (`from_source` of a local path), so every
node needs t2v-fast installed at the same path, as in the Dockerfile's image. `nightly` runs at 02:00 in
`--timezone`, never two at once (`concurrency_limit=1`), on the `orchestration` queue, and fans its shards out as
`render-shard` runs on the `render` queue. Workers:

    prefect worker start --pool gpu --work-queue render --limit 1          # on every GPU node
    prefect worker start --pool gpu --work-queue orchestration             # once, on any node

A node is taken for dead when its shard's heartbeat is silent for `--lease-seconds` and its worker's heartbeat to the
server for a lease or two worker beats (`PREFECT_WORKER_HEARTBEAT_SECONDS`, default 30), whichever is longer: set both
for the detection time you want (see `nightly`'s docstring).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, cast

from prefect import Flow, flow
from prefect.schedules import Cron

FLOWS_FOLDER = Path(__file__).resolve().parent
# Shards go to `render`, served on every GPU node by one worker with `--limit 1` (one shard per GPU at a time); the
# nightly orchestrator goes to `orchestration`, so it never holds a GPU worker's only slot.
RENDER_QUEUE = "render"
ORCHESTRATION_QUEUE = "orchestration"


def _flow(source: Path, entrypoint: str) -> Flow[..., Any]:
    """The flow at `entrypoint`: Prefect's sync/async dispatch returns it, not a coroutine, outside an event loop."""
    return cast("Flow[..., Any]", flow.from_source(source=str(source), entrypoint=entrypoint))


def deploy(
    manifest: str,
    out_dir: str,
    pool: str = "gpu",
    timezone: str = "UTC",
    cron: str = "0 2 * * *",
    source: Path = FLOWS_FOLDER,
    nightly_parameters: dict[str, Any] | None = None,
    schedule: bool = True,
) -> None:
    _flow(source, "render_shard.py:render_shard").deploy(
        name="render-shard",
        work_pool_name=pool,
        work_queue_name=RENDER_QUEUE,
        build=False,
        push=False,
        print_next_steps=False,
    )
    parameters = {"manifest": manifest, "out_dir": out_dir, "use_deployments": True, **(nightly_parameters or {})}
    _flow(source, "nightly.py:nightly").deploy(
        name="nightly",
        work_pool_name=pool,
        work_queue_name=ORCHESTRATION_QUEUE,
        build=False,
        push=False,
        schedules=[Cron(cron, timezone=timezone)] if schedule else None,
        concurrency_limit=1,
        parameters=parameters,
        print_next_steps=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", required=True, help="CSV manifest path, as every node sees it")
    parser.add_argument("--out", required=True, help="output folder every node shares")
    parser.add_argument("--pool", default="gpu", help="work pool (default %(default)s)")
    parser.add_argument("--timezone", default="UTC", help="timezone of the 02:00 schedule (default %(default)s)")
    parser.add_argument("--cron", default="0 2 * * *", help="schedule (default: 02:00 every day)")
    parser.add_argument(
        "--model",
        default="tiny-random",
        help="model for the night: preset, folder, hub id, or engine directory (onnxruntime/tensorrt), as every node"
        " sees it",
    )
    parser.add_argument("--backend", default="torch", help="torch, onnxruntime or tensorrt")
    parser.add_argument("--controlnet", help="ControlNet for the night's guided rows (preset, folder or hub id)")
    parser.add_argument("--shard-size", type=int, default=16, help="rows per shard (default %(default)s)")
    parser.add_argument(
        "--lease-seconds",
        type=float,
        default=60.0,
        help="a silent node's work moves to the others after this long (default %(default)s)",
    )
    args = parser.parse_args()
    parameters = {
        "model": args.model,
        "backend": args.backend,
        "controlnet": args.controlnet,
        "shard_size": args.shard_size,
        "lease_seconds": args.lease_seconds,
    }
    deploy(args.manifest, args.out, args.pool, args.timezone, args.cron, nightly_parameters=parameters)
    print(f"deployed nightly (cron {args.cron!r}, {args.timezone}) and render-shard on pool {args.pool!r}")


if __name__ == "__main__":
    main()
