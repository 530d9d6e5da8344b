"""The nightly flow's watching, as plain functions: when a shard is taken for dead, and what a night's report says
when shards of the same rows disagree (a false alarm and its relaunch)."""

import math

import pytest

from flows.nightly import HUNG_LEASES, STARTUP_LEASES, dead_reason, merge_night, worst_detection_seconds
from t2v_fast.bulk.rendering import RowResult

LEASE, WORKER = 8.0, 5.0


@pytest.mark.parametrize(
    ("state", "beat", "worker", "dead"),
    [
        ("RUNNING", LEASE - 0.1, math.inf, False),  # the heartbeat is recent: alive whatever the worker says
        ("RUNNING", LEASE, 2 * WORKER - 0.1, False),  # a late heartbeat, but the worker beats: not dead yet
        ("RUNNING", LEASE, 2 * WORKER, True),  # both silent long enough
        ("RUNNING", LEASE * HUNG_LEASES, 0.0, True),  # its worker beats, the shard does not: hung
        ("PENDING", LEASE * STARTUP_LEASES - 0.1, math.inf, False),  # still starting
        ("PENDING", LEASE * STARTUP_LEASES, math.inf, True),
    ],
)
def test_a_node_is_dead_only_when_every_sign_of_life_is_silent(state, beat, worker, dead):
    assert (dead_reason(state, beat, worker, LEASE, WORKER) is not None) == dead


def test_the_worker_limit_is_at_least_a_lease():
    assert dead_reason("RUNNING", 10.0, 9.9, lease=10.0, worker_heartbeat=1.0) is None
    assert dead_reason("RUNNING", 10.0, 10.0, lease=10.0, worker_heartbeat=1.0).startswith("stopped: no heartbeat")
    assert worst_detection_seconds(10.0, 1.0) < worst_detection_seconds(10.0, 30.0)


def _result(status: str, reason: str = "") -> RowResult:
    return RowResult("shot-00", 2, status, reason)


def test_a_row_any_shard_of_the_night_rendered_is_done_whatever_the_order():
    original_done = _result("done")
    relaunch_skipped = _result("skipped", "rendered by shard shard-0000 on gpu-2 (pid 12)")
    taken_over = _result("failed", "RuntimeError: row 2 (shot-00) was taken over by another run (this one stalled)")
    for outcomes in ([[original_done], [relaunch_skipped]], [[relaunch_skipped], [original_done]]):
        assert merge_night(outcomes) == [original_done]
    assert merge_night([[taken_over], [original_done]]) == [original_done]
    assert merge_night([[original_done], [taken_over]]) == [original_done]


def test_a_row_only_another_run_rendered_stays_skipped_and_the_last_failure_is_told():
    elsewhere = _result("skipped", "rendered by t2v-fast batch (pid 7) on host")
    assert merge_night([[_result("failed", "shard run crashed before this row finished")], [elsewhere]]) == [elsewhere]
    last = _result("failed", "OSError: cannot write out/shot-00.mp4: No space left on device")
    assert merge_night([[_result("failed", "first")], [last]]) == [last]
