"""README.md's command blocks run as written, so that the README cannot drift from the product.

Every ```bash and ```python block runs in a fresh temporary folder holding a copy of `examples/` and the project's
virtual environment as `.venv` (bash blocks after `source .venv/bin/activate`, as README says to do). A block that
cannot run here says why in a `<!-- readme-test: skip (REASON) -->` line right above it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(
    r"(?:<!-- readme-test: skip \((?P<reason>[^)]+)\) -->\n)?```(?P<lang>bash|python)\n(?P<code>.*?)```", re.S
)


def _blocks() -> list[tuple[str, str, str | None]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return [(m["lang"], m["code"], m["reason"]) for m in BLOCK.finditer(text)]


def _id(block: tuple[str, str, str | None]) -> str:
    lang, code, _ = block
    first = next(line for line in code.splitlines() if line.strip() and not line.startswith("#"))
    return f"{lang}: {first[:50]}"


BLOCKS = _blocks()


def test_the_readme_has_runnable_blocks():
    assert sum(reason is None for _, _, reason in BLOCKS) >= 4


@pytest.mark.parametrize("block", BLOCKS, ids=[_id(b) for b in BLOCKS])
def test_readme_block_runs_as_written(block, tmp_path):
    lang, code, reason = block
    if reason:
        pytest.skip(reason)
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    (tmp_path / ".venv").symlink_to(sys.prefix)  # the environment `make` created, where README says it is
    if lang == "bash":
        command = ["bash", "-euo", "pipefail", "-c", f"source .venv/bin/activate\n{code}"]
    else:
        command = [str(tmp_path / ".venv" / "bin" / "python"), "-c", code]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{code}\n--- stdout\n{result.stdout[-2000:]}\n--- stderr\n{result.stderr[-3000:]}"
