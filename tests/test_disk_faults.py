"""A real full disk and a real read-only mount as the output folder (a small tmpfs, mounted as root).

`t2v-fast batch`, `render_rows` and the nightly flow must fail the rows they cannot write with the file and the
reason, leave no partial file, keep every row already rendered, and render only what is missing once space is back.
"""

from __future__ import annotations

import csv
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import run_cli

ROWS = [f"r{k},a scene number {k},{k}" for k in range(4)]
FIRST, REST = ["r0", "r1"], ["r2", "r3"]
SETTINGS = ["--frames", "16", "--steps", "3"]
PAGE = 4096


def _mount(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def tmpfs(tmp_path) -> Iterator[Callable[[str, int], Path]]:
    """Mount a tmpfs of a given size at `tmp_path/<name>`; every mount is undone in teardown."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mounted: list[Path] = []

    def mount(name: str, size: int) -> Path:
        point = tmp_path / name
        point.mkdir()
        result = _mount(["-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(point)])
        if result.returncode != 0:
            pytest.skip(f"this machine does not let root mount a tmpfs: {result.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in reversed(mounted):
        if subprocess.run(["umount", str(point)], capture_output=True, timeout=60).returncode != 0:
            subprocess.run(["umount", "-l", str(point)], capture_output=True, timeout=60)


def _manifest(folder: Path, rows: list[str]) -> Path:
    path = folder / f"manifest-{len(rows)}.csv"
    path.write_text("id,prompt,seed\n" + "\n".join(rows) + "\n")
    return path


def _results(out: Path) -> dict[str, dict[str, str]]:
    with (out / "results.csv").open() as handle:
        return {row["id"]: row for row in csv.DictReader(handle)}


def _outputs(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.suffix in (".mp4", ".json")}


def _leftovers(out: Path) -> list[str]:
    """Partial or temporary files, claims: what a failed write must not leave behind."""
    return sorted(p.name for p in out.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp"))


def _fill(out: Path, leave: int) -> Path:
    """Fill the file system of `out` until only `leave` bytes are free."""
    stats = os.statvfs(out)
    filler = out / "filler.bin"
    filler.write_bytes(b"\0" * (stats.f_bavail * stats.f_frsize - leave))
    return filler


def _leave_less_than_a_video(out: Path) -> int:
    """Free space for claims and reports (a page each) but not for one more video of the size already rendered."""
    video = max(p.stat().st_size for p in out.glob("*.mp4"))
    leave = 6 * PAGE
    assert video > leave + PAGE, f"videos of {video} bytes are too small to tell a full disk"
    return leave


def test_batch_on_a_full_disk_fails_the_rows_it_cannot_write_and_finishes_them_once_space_is_freed(tmpfs, tmp_path):
    out = tmpfs("out", 1 << 20)
    first = run_cli("batch", str(_manifest(tmp_path, ROWS[:2])), "--out", str(out), *SETTINGS)
    assert first.returncode == 0, first.stderr[-3000:]
    kept = _outputs(out)
    assert sorted(kept) == sorted(f"{k}.{e}" for k in FIRST for e in ("mp4", "json"))

    filler = _fill(out, _leave_less_than_a_video(out))
    full = run_cli("batch", str(_manifest(tmp_path, ROWS)), "--out", str(out), *SETTINGS)
    assert full.returncode == 1, full.stderr[-3000:]
    results = _results(out)
    assert {k: results[k]["status"] for k in FIRST} == dict.fromkeys(FIRST, "skipped")
    for row in REST:
        assert results[row]["status"] == "failed", results[row]
        assert f"cannot write {out / row}.mp4: No space left on device" in results[row]["reason"], results[row]
    assert _outputs(out) == kept, "no partial output, and every rendered row kept as it was"
    assert _leftovers(out) == []

    filler.unlink()
    again = run_cli("batch", str(_manifest(tmp_path, ROWS)), "--out", str(out), *SETTINGS)
    assert again.returncode == 0, again.stderr[-3000:]
    results = _results(out)
    assert {k: r["status"] for k, r in results.items()} == {
        **dict.fromkeys(FIRST, "skipped"),
        **dict.fromkeys(REST, "done"),
    }
    assert {k: v for k, v in _outputs(out).items() if k in kept} == kept, "only the missing rows rendered"
    assert _leftovers(out) == []


def test_batch_into_a_read_only_mount_changes_nothing_and_says_why(tmpfs, tmp_path):
    out = tmpfs("out", 1 << 20)
    first = run_cli("batch", str(_manifest(tmp_path, ROWS[:2])), "--out", str(out), *SETTINGS)
    assert first.returncode == 0, first.stderr[-3000:]
    kept, report = _outputs(out), (out / "results.csv").read_bytes()
    assert _mount(["-o", "remount,ro", str(out)]).returncode == 0

    refused = run_cli("batch", str(_manifest(tmp_path, ROWS)), "--out", str(out), *SETTINGS)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert str(out) in refused.stderr and ("not writable" in refused.stderr or "Read-only" in refused.stderr)
    assert _outputs(out) == kept and (out / "results.csv").read_bytes() == report and _leftovers(out) == []

    assert _mount(["-o", "remount,rw", str(out)]).returncode == 0
    again = run_cli("batch", str(_manifest(tmp_path, ROWS)), "--out", str(out), *SETTINGS)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {k: r["status"] for k, r in _results(out).items()} == {
        **dict.fromkeys(FIRST, "skipped"),
        **dict.fromkeys(REST, "done"),
    }
    assert {k: v for k, v in _outputs(out).items() if k in kept} == kept


def test_render_rows_into_a_read_only_mount_fails_each_row_with_the_file_and_the_reason(tmpfs, pipeline):
    """The library call (the nightly's shards use it): each row fails with the file it could not write, at once."""
    from t2v_fast.bulk.manifest import ManifestRow
    from t2v_fast.bulk.rendering import render_rows
    from t2v_fast.core.params import ParamRequest
    from t2v_fast.loading import describe_model

    card = describe_model("tiny-random")
    settings = card.resolve(ParamRequest.of(frames=2, steps=2))
    rows = [ManifestRow(2 + k, f"r{k}", f"scene {k}", "", k, 1, settings, card.family) for k in range(3)]
    out = tmpfs("out", 1 << 20)
    [done] = render_rows(pipeline, rows[:1], out)
    assert done.status == "done"
    kept = _outputs(out)
    assert _mount(["-o", "remount,ro", str(out)]).returncode == 0

    results = render_rows(pipeline, rows, out, backoff_seconds=0)
    status = {r.id: (r.status, r.attempts) for r in results}
    assert status == {"r0": ("skipped", 0), "r1": ("failed", 1), "r2": ("failed", 1)}, "read-only: never retried"
    for result in results[1:]:
        assert f"cannot write {out / '.t2v-claims' / result.id}.claim: Read-only file system" in result.reason
    assert _outputs(out) == kept and _leftovers(out) == []


def _night(manifest: Path, out: Path) -> dict[str, int]:
    from flows.nightly import nightly

    return nightly(str(manifest), str(out), shard_size=1, defaults={"frames": 16, "steps": 3})


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_the_nightly_flow_on_a_full_disk_then_read_only_then_with_space_again(harness, tmpfs, tmp_path):
    out = tmpfs("out", 1 << 20)
    assert _night(_manifest(tmp_path, ROWS[:2]), out)["done"] == 2
    kept = _outputs(out)

    filler = _fill(out, _leave_less_than_a_video(out))
    counts = _night(_manifest(tmp_path, ROWS), out)
    assert counts == {"done": 0, "skipped": 2, "failed": 2, "rejected": 0}
    results = _results(out)
    for row in REST:
        assert f"cannot write {out / row}.mp4: No space left on device" in results[row]["reason"], results[row]
    assert _outputs(out) == kept and [n for n in _leftovers(out) if n != ".t2v-shards"] == []

    filler.unlink()
    report = (out / "results.csv").read_bytes()
    assert _mount(["-o", "remount,ro", str(out)]).returncode == 0
    with pytest.raises(OSError, match=f"cannot write the reports into {out}: Read-only file system"):
        _night(_manifest(tmp_path, ROWS), out)
    assert _outputs(out) == kept and (out / "results.csv").read_bytes() == report

    assert _mount(["-o", "remount,rw", str(out)]).returncode == 0
    assert _night(_manifest(tmp_path, ROWS), out) == {"done": 2, "skipped": 2, "failed": 0, "rejected": 0}
    assert {k: v for k, v in _outputs(out).items() if k in kept} == kept, "only the missing rows rendered"
