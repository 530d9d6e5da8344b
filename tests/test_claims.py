"""Row claims and heartbeats with real files and real processes: one holder per row, leases that expire, safe
take-overs, and a heartbeat that neither starves under load nor outlives its process."""

import multiprocessing
import os
import signal
import time
from pathlib import Path

from cpu_load import beat_gaps, cpu_load, watch_beats

from t2v_fast.bulk.claims import Claims, Heartbeat


def test_a_claimed_row_is_refused_to_another_claimant_and_free_after_release(tmp_path):
    first, second = Claims(tmp_path, "night-a"), Claims(tmp_path, "night-b")
    try:
        assert first.try_claim("row-1") is None
        holder = second.try_claim("row-1")
        assert holder is not None and holder.run == "night-a" and holder.pid == os.getpid()
        first.release("row-1")
        assert second.try_claim("row-1") is None
        assert first.try_claim("row-1").run == "night-b"
    finally:
        first.close()
        second.close()


def test_a_lease_is_renewed_while_held_and_taken_over_once_it_expires(tmp_path):
    live, dead, rival = Claims(tmp_path, "live", 0.8), Claims(tmp_path, "dead", 0.8), Claims(tmp_path, "rival", 0.8)
    try:
        assert live.try_claim("kept") is None and dead.try_claim("lost") is None
        dead._stop.set()  # the holder stops renewing, as a frozen or killed process would
        dead._renewer.join()
        time.sleep(1.6)
        assert rival.try_claim("kept").run == "live", "renewed: still held"
        assert rival.try_claim("lost") is None, "expired: taken over"
        assert not dead.holds("lost") and rival.holds("lost")
        dead.release("lost")  # the old holder cannot release what is no longer its own
        assert rival.holds("lost")
    finally:
        for claims in (live, rival):
            claims.close()


def test_a_claim_of_a_dead_process_on_this_host_is_taken_over_at_once(tmp_path):
    context = multiprocessing.get_context("spawn")
    process = context.Process(target=_claim_and_die, args=(str(tmp_path),))
    process.start()
    process.join(60)
    claims = Claims(tmp_path, "survivor", lease_seconds=3600)
    try:
        assert claims.holder("row")[0].run == "doomed"
        assert claims.try_claim("row") is None, "the holder's process is gone: no need to wait for its lease"
    finally:
        claims.close()


def _claim_and_die(folder: str) -> None:
    from pathlib import Path

    Claims(Path(folder), "doomed", lease_seconds=3600).try_claim("row")
    os._exit(0)  # no release, no clean-up


def _contend(folder: str, start, results) -> None:
    from pathlib import Path

    claims = Claims(Path(folder), f"contender-{os.getpid()}", lease_seconds=2.0)
    start.wait(60)  # everyone at once
    won = [row for row in (f"row-{k}" for k in range(40)) if claims.try_claim(row) is None]
    results.put(won)
    start.wait(60)  # hold (and renew) until everyone has tried
    claims._stop.set()


def test_many_processes_racing_for_stale_and_fresh_claims_never_share_a_row(tmp_path):
    stale = Claims(tmp_path, "stale", lease_seconds=0.5)
    for k in range(0, 40, 2):
        stale.try_claim(f"row-{k}")
    stale._stop.set()
    stale._renewer.join()
    time.sleep(1.0)  # half of the rows now have expired claims, half none
    context = multiprocessing.get_context("spawn")
    results, start = context.Queue(), context.Barrier(4)
    workers = [context.Process(target=_contend, args=(str(tmp_path), start, results)) for _ in range(4)]
    for worker in workers:
        worker.start()
    won = [row for _ in workers for row in results.get(timeout=120)]
    for worker in workers:
        worker.join(60)
    assert sorted(won) == sorted(f"row-{k}" for k in range(40)), "every row won exactly once"


def test_an_empty_claim_left_by_a_crash_expires_with_its_lease(tmp_path):
    """A claim file left empty (its writer died, or the disk filled up) must not hold its row forever."""
    claims = Claims(tmp_path, "night", lease_seconds=0.5)
    try:
        claims.path("row").write_text("")
        assert claims.try_claim("row").run == "another run", "fresh: maybe being written right now"
        old = time.time() - 1.0
        os.utime(claims.path("row"), (old, old))
        assert claims.try_claim("row") is None and claims.holds("row")
    finally:
        claims.close()


def test_the_heartbeat_keeps_time_while_this_process_holds_the_gil_on_an_oversubscribed_machine(tmp_path):
    """Three CPU burners, and this process's main thread inside C code that never lets other threads run: the
    heartbeat comes from its own process, so it is not late."""
    interval, seconds = 0.5, 8.0
    beat = tmp_path / "shard.alive"
    with cpu_load(3, 120):
        heartbeat = Heartbeat(beat, interval)
        watcher = watch_beats(beat, seconds)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            sum(range(20_000_000))  # holds the GIL for a good part of a second at a time
        heartbeat.stop()
        count, longest = beat_gaps(watcher)
    print(f"\n{count} beats every {interval} s under load, the longest gap {longest:.3f} s")
    assert count >= seconds / interval * 0.75 and longest < 2 * interval, (count, longest)


def _beat_then_die(path: str, pids) -> None:
    from pathlib import Path

    pids.put(Heartbeat(Path(path), 0.2).pid)
    time.sleep(60)


def test_the_heartbeat_stops_when_the_process_it_speaks_for_is_killed(tmp_path):
    beat = tmp_path / "shard.alive"
    context = multiprocessing.get_context("spawn")
    pids = context.Queue()
    process = context.Process(target=_beat_then_die, args=(str(beat), pids))
    process.start()
    beater = pids.get(timeout=60)
    os.kill(process.pid, signal.SIGKILL)
    process.join(30)
    deadline = time.monotonic() + 5
    while _alive(beater):
        assert time.monotonic() < deadline, "the beater outlived the process it beats for"
        time.sleep(0.05)
    last = beat.stat().st_mtime_ns
    time.sleep(0.6)
    assert beat.stat().st_mtime_ns == last, "no beat after death"


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for its new parent to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
