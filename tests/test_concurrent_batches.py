"""Two `t2v-fast batch` runs of one manifest into one folder, started a second apart, as separate processes."""

import re
import subprocess
import time

from conftest import CLI
from test_video_output import read_mp4

ROWS = [f"clip-{k},a scene number {k},{k}" for k in range(6)]
MANIFEST = "id,prompt,seed\n" + "\n".join(ROWS) + "\nbad,a bird,x\n"


def _counts(stdout: str) -> dict[str, int]:
    return {m[1]: int(m[2]) for m in re.finditer(r"^(done|skipped|failed|rejected) +(\d+)$", stdout, re.MULTILINE)}


def test_two_overlapping_runs_render_each_row_exactly_once(tmp_path):
    manifest = tmp_path / "night.csv"
    manifest.write_text(MANIFEST)
    out = tmp_path / "out"
    command = [*CLI, "batch", str(manifest), "--out", str(out), "--frames", "4", "--steps", "20", "--batch-videos", "1"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1)
    second = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runs = [process.communicate(timeout=600) for process in (first, second)]
    assert [process.returncode for process in (first, second)] == [0, 0], [err for _, err in runs]

    counts = [_counts(stdout) for stdout, _ in runs]
    assert sum(c["done"] for c in counts) == len(ROWS), f"each row rendered once in total: {counts}"
    assert all(c["done"] + c["skipped"] == len(ROWS) and c["rejected"] == 1 for c in counts), counts
    assert any("rendered by another run" in stdout for stdout, _ in runs), "a run says what the other rendered"
    for k in range(len(ROWS)):
        assert read_mp4(out / f"clip-{k}.mp4")[1].shape[0] == 4
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [], "no claims or temporaries left"
