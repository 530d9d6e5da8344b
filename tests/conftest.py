"""Shared fixtures: the tiny preset saved once per session through our CLI, and both pipelines loading it."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

CLI = [str(Path(sys.executable).with_name("t2v-fast"))]
ROOT = Path(__file__).resolve().parent.parent
# Files a test could plausibly write (pictures, results, examples); source files are left out, so that editing code
# while the tests run is not taken for a test writing over it.
SOURCE_SUFFIXES = {".py", ".md", ".toml", ".txt", ".cfg", ""}


def _tracked_data_files() -> dict[str, tuple[int, int]]:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode:
        return {}
    names = [n for n in listed.stdout.split("\0") if n and Path(n).suffix not in SOURCE_SUFFIXES]
    files = {}
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            stat = (ROOT / name).stat(follow_symlinks=False)
            files[name] = (stat.st_mtime_ns, stat.st_size)
    return files


@pytest.fixture(scope="session", autouse=True)
def tests_never_write_tracked_files():
    """Tests write only under temporary folders: fail the run when a tracked file changed during it."""
    before = _tracked_data_files()
    yield
    after = _tracked_data_files()
    # `make screenshots` asks the browser test to refresh the README's pictures in that folder: those may change.
    asked = os.environ.get("T2V_FAST_SCREENSHOTS")
    changed = sorted(n for n in before if after.get(n) != before[n] and not (asked and n.startswith(f"{asked}/")))
    assert not changed, f"tests wrote over tracked files: {changed}"


def run_cli(*args: str, check: bool = False, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The installed `t2v-fast` executable in a process of its own: for tests of the process itself (its exit
    status, what it imports, signals, environment) and for session fixtures; `cli` runs the same in this process."""
    result = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=600, cwd=cwd)
    if check:
        assert result.returncode == 0, result.stderr
    return result


@dataclass
class CliResult:
    """What `cli` returns: the attributes of `subprocess.CompletedProcess` that the tests read."""

    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capfd) -> Callable[..., CliResult]:
    """`t2v-fast ARGS` run in this process through `t2v_fast.cli.main`: its exit status (main's return value, or the
    SystemExit of argparse's errors, --help and --version) and what it wrote to stdout and stderr.

    main may run any number of times in one process: `logging.basicConfig` adds a handler only where the root logger
    has none (pytest's are there during a test) and the root logger's handlers are put back after every call anyway;
    `quiet_libraries` sets the same library verbosity and warning filters each time (pytest restores the filters
    after every test)."""
    from t2v_fast.cli import main

    def run(*args: str, check: bool = False) -> CliResult:
        capfd.readouterr()  # what the test wrote before: not the command's output
        handlers = logging.root.handlers[:]
        try:
            code = main(list(args))
        except SystemExit as exited:
            if isinstance(exited.code, str):  # as the interpreter does: the message on stderr, status 1
                print(exited.code, file=sys.stderr)
            code = exited.code if isinstance(exited.code, int) else int(exited.code is not None)
        finally:
            logging.root.handlers[:] = handlers
        out, err = capfd.readouterr()
        if check:
            assert code == 0, err
        return CliResult(code, out, err)

    return run


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models") / "tiny"
    run_cli("model", "save", "tiny-random", str(folder), check=True)
    return folder


@pytest.fixture(scope="session")
def controlnet_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tiny-controlnet"
    run_cli("model", "save", "tiny-random-controlnet", str(folder), check=True)
    return folder


@pytest.fixture(scope="session")
def pix2pix_folder(tmp_path_factory) -> Path:
    """`pix2pix-tiny-random` as `t2v-fast model save` writes it: the folder diffusers' Instruct-Pix2Pix pipeline
    loads (the edit tests' reference) and t2v-fast loads as a model folder."""
    folder = tmp_path_factory.mktemp("models") / "pix2pix"
    run_cli("model", "save", "pix2pix-tiny-random", str(folder), check=True)
    return folder


@pytest.fixture(scope="session")
def depth_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tiny-depth"
    run_cli("model", "save", "dpt-tiny-random", str(folder), check=True)
    return folder


@pytest.fixture(scope="session")
def guided_engines(tmp_path_factory) -> Path:
    """`tiny-random` with `tiny-random-controlnet` exported once through the CLI (the export's example shapes:
    8 frames, 1 video, 64×64; no fast mode's graphs)."""
    out = tmp_path_factory.mktemp("guided") / "engines"
    run_cli("export", "tiny-random", "--controlnet", "tiny-random-controlnet", "--out", str(out), "--quiet", check=True)
    return out


@pytest.fixture(scope="session")
def pipeline(tiny_folder):
    from t2v_fast import load_pipeline

    return load_pipeline(str(tiny_folder), device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def reference(tiny_folder):
    """diffusers' TextToVideoZeroPipeline, the oracle; never used by t2v-fast at run time."""
    from diffusers import TextToVideoZeroPipeline

    ref = TextToVideoZeroPipeline.from_pretrained(str(tiny_folder))
    ref.set_progress_bar_config(disable=True)
    return ref


def reference_frames(reference, seed: int, **kwargs) -> np.ndarray:
    """Run the reference and quantise its float frames to uint8 exactly as we do."""
    images = reference(generator=torch.Generator().manual_seed(seed), **kwargs).images
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)


# Our parameter names that TextToVideoZeroPipeline spells differently; height, width, t0 and t1 are its names too.
REFERENCE_RENAMED = {
    "frames": "video_length",
    "steps": "num_inference_steps",
    "guidance": "guidance_scale",
    "motion_x": "motion_field_strength_x",
    "motion_y": "motion_field_strength_y",
}


def reference_arguments(case: dict) -> dict:
    """A test case's generation parameters as the reference's keyword arguments (its seed goes to a generator)."""
    return {REFERENCE_RENAMED.get(name, name): value for name, value in case.items() if name != "seed"}


def max_pixel_diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape, (a.shape, b.shape)
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def assert_is_moving_video(frames: np.ndarray) -> None:
    """Guard against comparisons that pass trivially: frames have content and differ from each other."""
    assert frames.std() > 10, "frames are almost constant"
    assert np.abs(np.diff(frames.astype(np.int16), axis=0)).mean() > 1, "frames do not change over time"


@pytest.fixture(scope="session")
def tiny_engines(tmp_path_factory) -> Path:
    """`tiny-random` exported to ONNX once per session through the CLI (example shapes: 8 frames, 1 video, 64x64),
    with fast mode's two graphs (`--fast`), so that one export serves the exact path's tests and fast mode's.

    Exported without --out from a scratch working directory, so the default location `engines/<model>` is used.
    An export without `--fast` is `tests/test_modelscope.py`'s.
    """
    workdir = tmp_path_factory.mktemp("workdir")
    run_cli("export", "tiny-random", "--fast", "--quiet", check=True, cwd=workdir)
    return workdir / "engines" / "tiny-random"


@pytest.fixture
def read_only_folder(tmp_path) -> Iterator[Path]:
    """A folder nobody can write to: a tmpfs mounted read-only as root (as in CI), chmod 555 for anyone else."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a read-only tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)
