"""An oversubscribed machine for tests: CPU-burning processes beside them, bounded in time, always stopped."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

# Each burner stops by itself after `seconds` even if the test that started it is killed.
_BURN = "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end:\n    pass\n"

# Watches files from outside the processes under test, until its stdin closes or `seconds` pass: the number of beats
# seen and the longest gap between two mtimes of one file, over every file matching a glob pattern.
_WATCH = """
import glob, os, sys, threading, time
pattern, seconds = sys.argv[1], float(sys.argv[2])
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
end, last, gaps = time.monotonic() + seconds, {}, []
while not stop.is_set() and time.monotonic() < end:
    for path in glob.glob(pattern):
        try:
            mtime = os.stat(path).st_mtime_ns
        except OSError:
            continue
        if mtime != last.get(path):
            if path in last:
                gaps.append((mtime - last[path]) / 1e9)
            last[path] = mtime
    time.sleep(0.005)
print(len(gaps), max(gaps, default=float("inf")))
"""


@contextlib.contextmanager
def cpu_load(processes: int = 3, seconds: float = 900) -> Iterator[list[subprocess.Popen]]:
    """`processes` busy loops (the machine has 2 cores in CI: oversubscribed), killed when the block ends."""
    burners = [subprocess.Popen([sys.executable, "-c", _BURN, str(seconds)]) for _ in range(processes)]
    try:
        yield burners
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()


def watch_beats(pattern: Path | str, seconds: float) -> subprocess.Popen:
    """Start watching the files matching `pattern` (a path, or a glob) for at most `seconds`; `beat_gaps` stops it
    and gives (beats seen, longest gap in seconds between two beats of one file)."""
    return subprocess.Popen(
        [sys.executable, "-c", _WATCH, str(pattern), str(seconds)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def beat_gaps(watcher: subprocess.Popen) -> tuple[int, float]:
    count, longest = watcher.communicate(input="", timeout=600)[0].split()
    return int(count), float(longest)
