"""Real parts: `prefect server start` (SQLite, temporary home, free loopback port), pool `gpu`, our deployments,
an orchestration worker and two GPU workers, all on localhost; then a crash of a shard mid-run and a second night, a
dead node, a frozen node (a false alarm) and a night on an oversubscribed machine where nobody dies.

Every night checks what a plain night must do besides its own fault: the frozen node's night that the shards fan out
over both GPU workers (every valid row in exactly one shard) and that the bad row is rejected and each sidecar records
its row's seed; the second night after the crash that every shard of a clean night completes. A night with no fault
at all would test nothing more, so there is none (it cost a minute per database)."""

import collections
import csv
import json
import os
import signal
import time

import pytest
from cpu_load import beat_gaps, cpu_load, watch_beats
from prefect_cluster import (
    BIN,
    WORKER_HEARTBEAT_SECONDS,
    PostgresServer,
    PrefectCluster,
    descendants,
    postgres_binaries,
)
from test_video_output import read_mp4

from flows.nightly import worst_detection_seconds

pytestmark = pytest.mark.integration

ROWS = [f"shot-{k:02d},a scene number {k},{k}" for k in range(7)]
MANIFEST = "id,prompt,seed\n" + "\n".join(ROWS) + "\n,,\nbroken,a bird,x\n"
VALID = [row.split(",")[0] for row in ROWS]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def cluster(request, tmp_path_factory):
    """The whole cluster on a Prefect server backed by SQLite, then by a real PostgreSQL server."""
    postgres = None
    if request.param == "postgresql":
        if postgres_binaries() is None:
            pytest.skip("PostgreSQL's server programs are not installed (Debian: apt-get install postgresql)")
        postgres = PostgresServer()
        postgres.start()
    cluster = PrefectCluster(tmp_path_factory.mktemp("prefect"), database_url=postgres.url if postgres else None)
    try:
        cluster.start_server()
        cluster.run(str(BIN / "prefect"), "work-pool", "create", "gpu", "--type", "process")
        cluster.python("from flows.deploy import deploy; deploy('unused.csv', 'unused', schedule=False)")
        cluster.start_worker("orchestrator", "orchestration")
        cluster.workers = {name: cluster.start_worker(name, "render", limit=1) for name in ("gpu-1", "gpu-2")}
        yield cluster
    finally:
        cluster.close()
        if postgres:
            postgres.stop()


def production_database_only(cluster, night: str):
    """The killed shard's night and the two beside CPU burners test retries, heartbeats and relaunches; they run on
    PostgreSQL, the production one, and not again on SQLite, to keep `make test` within its half hour. SQLite runs
    the frozen node's night, which also checks any night's fan-out and report."""
    if cluster.database_url is None:
        pytest.skip(f"{night} runs on PostgreSQL only (the production database); SQLite runs the frozen node's night")


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


def _wait_for_a_shard_part_way(out, rows_per_shard=3, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in (out / ".t2v-shards").glob("*.json"):
            try:
                shard = json.loads(record.read_text())
            except (OSError, ValueError):
                continue
            if 1 <= len(shard["results"]) < rows_per_shard:
                return shard
        time.sleep(0.1)
    raise AssertionError("no shard was caught part-way")


def _wait_for_night(cluster, run_id, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = next(r for r in cluster.flow_runs("nightly") if r["id"] == run_id)["state"]
        if state in ("COMPLETED", "FAILED", "CRASHED"):
            return state
        time.sleep(1)
    raise AssertionError(f"the night did not end within {timeout} s")


def test_killed_shard_then_second_night_completes_every_row_once(cluster, tmp_path):
    production_database_only(cluster, "the killed shard's night")
    manifest = tmp_path / "night.csv"
    manifest.write_text(MANIFEST)
    out = tmp_path / "shared-out"
    defaults = {"frames": 6, "steps": 20}
    # One video per UNet batch, so a shard of 3 rows finishes them one after another and can be killed in between.
    run_id, _ = trigger(cluster, manifest, out, wait=False, defaults=defaults, shard_size=3, batch_videos=1)

    victim = _wait_for_a_shard_part_way(out)  # a shard of 3 rows, part-way through
    os.kill(victim["pid"], signal.SIGKILL)
    _wait_for_night(cluster, run_id, 240)
    first_night = read_results(out)
    failed = {k for k in VALID if first_night[k]["status"] == "failed"}
    assert failed and all("shard run crashed" in first_night[k]["reason"] for k in failed), first_night
    done_before = {k: (out / f"{k}.json").stat().st_mtime_ns for k in VALID if first_night[k]["status"] == "done"}
    assert done_before, "some rows finished before the kill"

    first_runs = {r["id"] for r in shard_runs(cluster, out)}
    _, state = trigger(cluster, manifest, out, defaults=defaults, shard_size=3, batch_videos=1)
    assert state == "COMPLETED"
    second_runs = [r for r in shard_runs(cluster, out) if r["id"] not in first_runs]
    assert second_runs and all(r["state"] == "COMPLETED" for r in second_runs), second_runs
    second_night = read_results(out)
    assert {k: second_night[k]["status"] for k in done_before} == dict.fromkeys(done_before, "skipped")
    assert all(second_night[k]["status"] == "done" for k in VALID if k not in done_before)
    assert {k: (out / f"{k}.json").stat().st_mtime_ns for k in done_before} == done_before, "nothing rendered twice"
    for name in VALID:
        assert read_mp4(out / f"{name}.mp4")[1].shape[0] == 6
        assert json.loads((out / f"{name}.json").read_text())["params"]["frames"] == 6
    leftovers = [p.name for p in out.iterdir() if p.name.endswith(".tmp") or (p.name.startswith(".") and p.is_file())]
    assert leftovers == [], "no partial or temporary file where outputs are read"


LEASE_SECONDS = 8
# Time limits from the lease: the night must take a dead node for dead within the worst-case detection time (both
# heartbeats silent long enough, seen at the polls), and relaunch its rows within a few seconds of that.
DETECTION_SECONDS = worst_detection_seconds(LEASE_SECONDS, WORKER_HEARTBEAT_SECONDS)
RELAUNCH_SECONDS = 4
# Bounds the CPU burners beside a test, whatever happens to it.
LOAD_SECONDS = 900
# Rows of the nights below: under load each takes seconds (long enough to catch a shard part-way), and the three
# nights fit make test's time budget.
NIGHT_DEFAULTS = {"frames": 6, "steps": 12}


def _done_counts(out):
    """How many times each row was rendered, by every shard record of the folder."""
    return collections.Counter(
        entry["id"]
        for record in (out / ".t2v-shards").glob("*.json")
        for entry in json.loads(record.read_text())["results"]
        if entry["status"] == "done"
    )


def _assert_clean(out):
    leftovers = [p.name for p in out.iterdir() if p.name.endswith(".tmp") or (p.name.startswith(".") and p.is_file())]
    assert leftovers == [] and not (out / ".t2v-claims").exists(), "no temporary file or claim left"


def test_a_dead_node_s_rows_move_to_the_live_node_the_same_night(cluster, tmp_path):
    """SIGKILL a render node's worker and every process under it, mid-shard, with the machine oversubscribed (three
    CPU-burning processes beside the cluster): nobody reports anything."""
    production_database_only(cluster, "a loaded night")
    manifest = tmp_path / "night.csv"
    manifest.write_text(MANIFEST)
    out = tmp_path / "shared-out"
    options = dict(defaults=NIGHT_DEFAULTS, shard_size=3, batch_videos=1, lease_seconds=LEASE_SECONDS)
    with cpu_load(3, LOAD_SECONDS):
        run_id, _ = trigger(cluster, manifest, out, wait=False, **options)

        victim = _wait_for_a_shard_part_way(out)
        node = next(name for name, worker in cluster.workers.items() if victim["pid"] in descendants(worker.pid))
        worker = cluster.workers[node]
        doomed = [worker.pid, *descendants(worker.pid)]
        killed_at = time.time()
        for pid in doomed:
            os.kill(pid, signal.SIGKILL)
        worker.wait(30)

        assert _wait_for_night(cluster, run_id, LEASE_SECONDS + 240) == "COMPLETED"
    night_seconds = time.time() - killed_at
    results = read_results(out)
    assert {k: results[k]["status"] for k in VALID} == dict.fromkeys(VALID, "done"), results

    runs = shard_runs(cluster, out)
    dead = [r for r in runs if r["state"] == "CRASHED"]
    assert len(dead) == 1 and dead[0]["labels"]["prefect.worker.name"] == node
    assert f"node {node} stopped: no heartbeat" in dead[0]["message"]
    relaunched = [r for r in runs if "relaunch" in r["name"]]
    assert relaunched and all(r["state"] == "COMPLETED" for r in relaunched)
    assert {r["labels"]["prefect.worker.name"] for r in relaunched} == {"gpu-1", "gpu-2"} - {node}
    moved_after = min(r["created"] for r in relaunched) - killed_at
    assert moved_after <= LEASE_SECONDS + 10, f"work moved {moved_after:.0f} s after the node died"
    assert moved_after <= DETECTION_SECONDS + RELAUNCH_SECONDS, f"work moved {moved_after:.0f} s after the node died"
    print(f"\n{node} killed: its rows moved after {moved_after:.1f} s; the night ended after {night_seconds:.1f} s")

    done = _done_counts(out)
    assert max(done.values()) == 1, f"rendered twice: {[k for k, n in done.items() if n > 1]}"
    for name in VALID:
        assert read_mp4(out / f"{name}.mp4")[1].shape[0] == 6
    _assert_clean(out)
    summary = cluster.artifact("nightly-summary", run_id)
    assert f"Dead node: node {node} stopped" in summary and "False alarm" not in summary, summary
    cluster.workers[node] = cluster.start_worker(node, "render", limit=1)


SHORT_LEASE_SECONDS = 4


def test_a_short_lease_night_on_an_oversubscribed_machine_declares_no_node_dead(cluster, tmp_path):
    """The failure of issue 22: three CPU-burning processes beside two rendering nodes and a lease of a few seconds,
    and nobody dies: no node is taken for dead, every valid row is `done` and rendered once."""
    production_database_only(cluster, "a loaded night")
    manifest = tmp_path / "night.csv"
    manifest.write_text(MANIFEST)
    out = tmp_path / "shared-out"
    options = dict(defaults=NIGHT_DEFAULTS, shard_size=2, batch_videos=1, lease_seconds=SHORT_LEASE_SECONDS)
    with cpu_load(3, LOAD_SECONDS):
        watcher = watch_beats(out / ".t2v-shards" / "*.alive", LOAD_SECONDS)
        started = time.time()
        _, state = trigger(cluster, manifest, out, **options)
        beats, longest = beat_gaps(watcher)
    assert state == "COMPLETED"
    night_seconds = time.time() - started
    interval = SHORT_LEASE_SECONDS / 4
    print(f"\n{beats} heartbeats due every {interval} s under load: the longest gap {longest:.2f} s")
    assert beats > 0 and longest < SHORT_LEASE_SECONDS, "a heartbeat came a whole lease late"

    runs = shard_runs(cluster, out)
    assert [r["name"] for r in runs if "relaunch" in r["name"] or r["state"] != "COMPLETED"] == [], runs
    assert sorted(row["id"] for run in runs for row in run["parameters"]["rows"]) == sorted(VALID)
    results = read_results(out)
    assert {k: results[k]["status"] for k in VALID} == dict.fromkeys(VALID, "done"), results
    assert _done_counts(out) == dict.fromkeys(VALID, 1), "each row rendered exactly once"
    _assert_clean(out)
    print(f"lease {SHORT_LEASE_SECONDS} s under load: no false alarm; the night took {night_seconds:.1f} s")


def test_a_frozen_node_taken_for_dead_is_a_false_alarm_and_every_row_it_rendered_is_done(cluster, tmp_path):
    """SIGSTOP a render node's worker and its processes mid-shard until the night takes it for dead and relaunches
    its rows, then SIGCONT (a stalled mount, a paused VM): the report is still true. Also the fan-out of any night:
    the first shards hold every valid row once and went to both GPU workers."""
    manifest = tmp_path / "night.csv"
    manifest.write_text(MANIFEST)
    out = tmp_path / "shared-out"
    options = dict(defaults=NIGHT_DEFAULTS, shard_size=3, batch_videos=1, lease_seconds=LEASE_SECONDS)
    run_id, _ = trigger(cluster, manifest, out, wait=False, **options)

    victim = _wait_for_a_shard_part_way(out)
    node = next(name for name, worker in cluster.workers.items() if victim["pid"] in descendants(worker.pid))
    frozen = [cluster.workers[node].pid, *descendants(cluster.workers[node].pid)]
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + DETECTION_SECONDS + RELAUNCH_SECONDS
        while not any("relaunch" in r["name"] for r in shard_runs(cluster, out)):
            assert time.monotonic() < deadline, "the frozen node was not taken for dead in time"
            time.sleep(0.5)
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)

    assert _wait_for_night(cluster, run_id, LEASE_SECONDS + 240) == "COMPLETED"
    # The night's first shards (before any relaunch): every valid row in exactly one, on both GPU workers.
    first_shards = [r for r in shard_runs(cluster, out) if "relaunch" not in r["name"]]
    assert len(first_shards) >= 3
    assert sorted(row["id"] for run in first_shards for row in run["parameters"]["rows"]) == sorted(VALID)
    assert {r["labels"]["prefect.worker.name"] for r in first_shards} == {"gpu-1", "gpu-2"}
    results = read_results(out)
    assert {k: results[k]["status"] for k in VALID} == dict.fromkeys(VALID, "done"), results
    assert results["broken"]["status"] == "rejected"
    assert _done_counts(out) == dict.fromkeys(VALID, 1), "each row rendered exactly once"
    summary = cluster.artifact("nightly-summary", run_id)
    assert "False alarm:" in summary and "Dead node" not in summary, summary
    assert "| done | 7 |" in summary and "| skipped | 0 |" in summary, summary
    for name in VALID:
        assert read_mp4(out / f"{name}.mp4")[1].shape[0] == 6
        assert json.loads((out / f"{name}.json").read_text())["seed"] == int(name.split("-")[1])
    _assert_clean(out)


def test_a_night_of_plain_and_guided_rows_renders_on_the_gpu_workers(cluster, tmp_path):
    """Guided rows through the real deployments and workers: the night's ControlNet reaches every shard, and the rows
    travel to them as JSON with their control videos. Its rules do not depend on the database: PostgreSQL only."""
    production_database_only(cluster, "a guided night")
    from benchmarks.guided import moving_shape
    from t2v_fast.core.video import write_mp4

    write_mp4(moving_shape(3, 48, 64), tmp_path / "walk.mp4", fps=8)
    manifest = tmp_path / "night.csv"
    manifest.write_text(
        "id,prompt,control,annotator,frames\nplain,a cat,,,2\nwalk,a robot walking,walk.mp4,canny,\n"
        "edges,a robot walking,walk.mp4,none,2\nlost,a robot,missing.mp4,,\n"
    )
    out = tmp_path / "out"
    _, state = trigger(cluster, manifest, out, defaults={"steps": 3}, controlnet="tiny-random-controlnet")
    assert state == "COMPLETED"
    results = read_results(out)
    assert {k: r["status"] for k, r in results.items()} == {
        "plain": "done",
        "walk": "done",
        "edges": "done",
        "lost": "rejected",
    }
    walk = json.loads((out / "walk.json").read_text())
    assert (walk["model"]["task"], walk["model"]["controlnet"]["id"]) == ("guided", "tiny-random-controlnet")
    assert read_mp4(out / "walk.mp4")[1].shape[0] == 3 and read_mp4(out / "edges.mp4")[1].shape[0] == 2
    assert all(r["state"] == "COMPLETED" for r in shard_runs(cluster, out))
