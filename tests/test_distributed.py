"""Real parts: `prefect server start` (SQLite, temporary home, free loopback port), pool `gpu`, our deployments,
an orchestration worker and two GPU workers, all on localhost; then a crash of a shard mid-run and a second night."""

import csv
import json
import os
import signal
import time

import pytest
from prefect_cluster import BIN, PrefectCluster
from test_video_output import read_mp4

ROWS = [f"shot-{k:02d},a scene number {k},{k}" for k in range(7)]
MANIFEST = "id,prompt,seed\n" + "\n".join(ROWS) + "\n,,\nbroken,a bird,x\n"
VALID = [row.split(",")[0] for row in ROWS]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = PrefectCluster(tmp_path_factory.mktemp("prefect"))
    try:
        cluster.start_server()
        cluster.run(str(BIN / "prefect"), "work-pool", "create", "gpu", "--type", "process")
        cluster.python("from flows.deploy import deploy; deploy('unused.csv', 'unused', schedule=False)")
        cluster.start_worker("orchestrator", "orchestration")
        cluster.start_worker("gpu-1", "render", limit=1)
        cluster.start_worker("gpu-2", "render", limit=1)
        yield cluster
    finally:
        cluster.close()


def trigger(cluster, manifest, out, wait=True, **parameters):
    parameters = {"manifest": str(manifest), "out_dir": str(out), "shard_size": 2, **parameters}
    code = (
        "from prefect.deployments import run_deployment\n"
        f"run = run_deployment('nightly/nightly', parameters={parameters!r}, timeout={None if wait else 0})\n"
        "print(run.id, run.state_type.value if run.state_type else None)"
    )
    run_id, state = cluster.python(code).split()[-2:]
    return run_id, state


def shard_runs(cluster, out):
    return [r for r in cluster.flow_runs("render-shard") if r["parameters"]["out_dir"] == str(out)]


def read_results(out):
    with (out / "results.csv").open() as handle:
        return {row["id"]: row for row in csv.DictReader(handle)}


def test_nightly_fans_shards_out_to_both_gpu_workers(cluster, tmp_path):
    manifest = tmp_path / "night.csv"
    manifest.write_text(MANIFEST)
    out = tmp_path / "shared-out"
    _, state = trigger(cluster, manifest, out, defaults={"frames": 3, "steps": 4})
    assert state == "COMPLETED"

    runs = shard_runs(cluster, out)
    assert len(runs) >= 3 and all(r["state"] == "COMPLETED" for r in runs)
    rendered = [row["id"] for run in runs for row in run["parameters"]["rows"]]
    assert sorted(rendered) == sorted(VALID), "every valid row in exactly one shard"
    assert {r["labels"]["prefect.worker.name"] for r in runs} == {"gpu-1", "gpu-2"}

    results = read_results(out)
    assert {k: results[k]["status"] for k in VALID} == dict.fromkeys(VALID, "done")
    assert results["broken"]["status"] == "rejected"
    for name in VALID:
        assert read_mp4(out / f"{name}.mp4")[1].shape[0] == 3
        assert json.loads((out / f"{name}.json").read_text())["seed"] == int(name.split("-")[1])


def test_killed_shard_then_second_night_completes_every_row_once(cluster, tmp_path):
    manifest = tmp_path / "night.csv"
    manifest.write_text(MANIFEST)
    out = tmp_path / "shared-out"
    defaults = {"frames": 6, "steps": 20}
    # One video per UNet batch, so a shard of 3 rows finishes them one after another and can be killed in between.
    run_id, _ = trigger(cluster, manifest, out, wait=False, defaults=defaults, shard_size=3, batch_videos=1)

    victim, deadline = None, time.monotonic() + 240
    while victim is None and time.monotonic() < deadline:
        for record in (out / ".t2v-shards").glob("*.json"):
            try:
                shard = json.loads(record.read_text())
            except (OSError, ValueError):
                continue
            if 1 <= len(shard["results"]) < 3:  # a shard of 3 rows, part-way through
                victim = shard
                break
        time.sleep(0.1)
    assert victim is not None, "no shard was caught part-way"
    os.kill(victim["pid"], signal.SIGKILL)

    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        state = next(r for r in cluster.flow_runs("nightly") if r["id"] == run_id)["state"]
        if state in ("COMPLETED", "FAILED", "CRASHED"):
            break
        time.sleep(1)
    first_night = read_results(out)
    failed = {k for k in VALID if first_night[k]["status"] == "failed"}
    assert failed and all("shard run crashed" in first_night[k]["reason"] for k in failed), first_night
    done_before = {k: (out / f"{k}.json").stat().st_mtime_ns for k in VALID if first_night[k]["status"] == "done"}
    assert done_before, "some rows finished before the kill"

    _, state = trigger(cluster, manifest, out, defaults=defaults, shard_size=3, batch_videos=1)
    assert state == "COMPLETED"
    second_night = read_results(out)
    assert {k: second_night[k]["status"] for k in done_before} == dict.fromkeys(done_before, "skipped")
    assert all(second_night[k]["status"] == "done" for k in VALID if k not in done_before)
    assert {k: (out / f"{k}.json").stat().st_mtime_ns for k in done_before} == done_before, "nothing rendered twice"
    for name in VALID:
        assert read_mp4(out / f"{name}.mp4")[1].shape[0] == 6
        assert json.loads((out / f"{name}.json").read_text())["params"]["frames"] == 6
    leftovers = [p.name for p in out.iterdir() if p.name.endswith(".tmp") or (p.name.startswith(".") and p.is_file())]
    assert leftovers == [], "no partial or temporary file where outputs are read"
