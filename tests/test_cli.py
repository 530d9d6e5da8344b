"""The `t2v-fast` command, run as a user would: files on disk, exit codes, stderr.

The commands run in this process (`t2v_fast.cli.main`, the `cli` fixture); the one test of the installed executable
checks that its exit status is main's. What needs processes of their own (nothing heavy imported at --help, runs
killed or signalled) is tested where that is the subject (test_structure, test_concurrent_batches, test_app)."""

import json

import pytest
from conftest import run_cli
from test_video_output import read_mp4


def test_generate_writes_mp4_and_sidecar(cli, tmp_path):
    out = tmp_path / "cat.mp4"
    result = cli(
        "generate",
        "a cat playing piano",
        "--model",
        "tiny-random",
        "--out",
        str(out),
        "--frames",
        "6",
        "--steps",
        "5",
        "--seed",
        "42",
        "--fps",
        "5",
        "--motion-x",
        "8",
        "--negative-prompt",
        "dark",
    )
    assert result.returncode == 0, result.stderr
    assert "denoising" in result.stderr  # the progress bar
    _, frames = read_mp4(out)
    assert frames.shape == (6, 64, 64, 3)
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert (sidecar["seed"], sidecar["params"]["motion_x"], sidecar["params"]["fps"]) == (42, 8.0, 5.0)
    assert sidecar["negative_prompt"] == "dark"


def test_videos_per_prompt_writes_numbered_files(cli, tmp_path):
    out = tmp_path / "v.mp4"
    result = cli(
        "generate",
        "a dog",
        "--out",
        str(out),
        "--frames",
        "2",
        "--steps",
        "3",
        "--seed",
        "1",
        "--videos-per-prompt",
        "2",
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and "denoising" not in result.stderr
    seeds = [json.loads((tmp_path / f"v-{k}.json").read_text())["seed"] for k in range(2)]
    assert seeds == [1, 2]
    assert (tmp_path / "v-0.mp4").is_file() and (tmp_path / "v-1.mp4").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--height", "60"], "height must be a multiple of 8, got 60"),
        (["--width", "8"], "width must be >= 16, got 8"),
        (["--model", "./no-such-folder"], "'./no-such-folder' is not a preset"),
        (["--steps", "10", "--t0", "9", "--t1", "5"], "0 <= t0 < t1 < steps"),
        (["--chunk-size", "1"], "chunk_size must be >= 2"),
        (["--guidance", "-1"], "guidance must be >= 0"),
        (["--dtype", "float64"], "invalid choice: 'float64'"),
        (["--frames", "abc"], "expected an integer, got 'abc'"),
        (["--backend", "nope"], "invalid choice: 'nope'"),
        (["--backend", "onnxruntime"], "is not one (no engine.json)"),
    ],
)
def test_user_errors_exit_2_with_one_line(cli, tmp_path, args, message):
    result = cli("generate", "a cat", "--out", str(tmp_path / "x.mp4"), *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.iterdir())


def test_unwritable_output_is_refused(tmp_path):
    """Through the installed executable: its exit status and stderr are main's."""
    result = run_cli("generate", "a cat", "--out", str(tmp_path / "missing" / "x.mp4"))
    assert result.returncode == 2 and "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_model_save_refuses_non_empty_folder(cli, tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    result = cli("model", "save", "tiny-random", str(tmp_path))
    assert result.returncode == 2 and "not empty" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("prompt", ["", "   "], ids=["empty", "blank"])
def test_empty_or_blank_prompt_exits_2_before_loading(cli, tmp_path, prompt):
    result = cli("generate", prompt, "--out", str(tmp_path / "x.mp4"))
    assert result.returncode == 2
    assert result.stderr.strip() == "t2v-fast: error: missing prompt"
    assert not list(tmp_path.iterdir())


def test_loading_is_announced(cli, tmp_path):
    out = tmp_path / "v.mp4"
    result = cli("generate", "a dog", "--out", str(out), "--frames", "2", "--steps", "2", "--seed", "0")
    assert result.returncode == 0, result.stderr
    assert "t2v-fast: loading tiny-random (torch backend) ... done in" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--frames", "0"], "frames must be >= 1, got 0"),
        (["--frames", "x"], "argument --frames: expected an integer, got 'x' (see t2v-fast generate --help)"),
        (["--dtype", "float64"], "invalid choice: 'float64'"),
        (["--no-such-option"], "unrecognized arguments: --no-such-option"),
    ],
)
def test_argument_errors_are_one_line(cli, tmp_path, args, message):
    result = cli("generate", "a cat", "--out", str(tmp_path / "x.mp4"), *args)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr
    assert "usage:" not in result.stderr


def test_every_value_is_checked_before_the_model_loads_and_all_at_once(cli, tmp_path):
    result = cli("generate", "a cat", "--out", str(tmp_path / "x.mp4"), "--fps", "-4", "--frames", "0")
    assert result.returncode == 2
    assert result.stderr.strip() == "t2v-fast: error: frames must be >= 1, got 0; fps must be > 0, got -4.0"
    assert "loading" not in result.stderr and not list(tmp_path.iterdir())


def test_a_family_rule_is_checked_before_the_model_loads(cli, tmp_path):
    result = cli(
        "generate", "a cat", "--model", "modelscope-tiny-random", "--out", str(tmp_path / "x.mp4"), "--t0", "3"
    )
    assert result.returncode == 2 and "t0 is a Text2Video-Zero parameter" in result.stderr
    assert "loading" not in result.stderr


def test_batch_into_a_read_only_folder_is_refused_before_the_model_loads(cli, tmp_path, read_only_folder):
    manifest = tmp_path / "m.csv"
    manifest.write_text("prompt\na cat\n")
    result = cli("batch", str(manifest), "--out", str(read_only_folder / "night"))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().startswith("t2v-fast: error: cannot create output folder")
    assert len(result.stderr.strip().splitlines()) == 1 and "loading" not in result.stderr
    result = cli("batch", str(manifest), "--out", str(read_only_folder))
    assert result.returncode == 2 and result.stderr.strip().endswith("is not writable"), result.stderr
    assert "Traceback" not in result.stderr and "loading" not in result.stderr


def test_batch_out_that_is_a_file_is_refused(cli, tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("prompt\na cat\n")
    taken = tmp_path / "results"
    taken.write_text("mine")
    result = cli("batch", str(manifest), "--out", str(taken))
    assert (
        result.returncode == 2 and result.stderr.strip() == f"t2v-fast: error: output folder {str(taken)!r} is a file"
    )
    assert taken.read_text() == "mine"


def test_progress_bar_counts_the_steps_the_user_set(cli, tmp_path):
    from t2v_fast.core.chunks import plan_chunks
    from t2v_fast.families.text2video_zero.schedule import StepPlan, resolve_t0_t1
    from t2v_fast.loading import describe_model

    result = cli("generate", "a dog", "--out", str(tmp_path / "v.mp4"), "--frames", "2", "--steps", "20")
    assert result.returncode == 0, result.stderr
    assert "denoising: 100%" in result.stderr and "20/20" in result.stderr, result.stderr
    # Chunked: the steps before t1 once, then every chunk's steps after t1.
    scheduler = describe_model("tiny-random").scheduler
    plan = StepPlan.build(scheduler, 20, *resolve_t0_t1(scheduler, 20, None, None))
    chunks = len(plan_chunks(5, 3))
    total = len(plan.to_t1) + chunks * len(plan.from_t1)
    result = cli(
        "generate", "a dog", "--out", str(tmp_path / "w.mp4"), "--frames", "5", "--steps", "20", "--chunk-size", "3"
    )
    assert result.returncode == 0, result.stderr
    assert f"denoising {chunks} chunks: 100%" in result.stderr and f"{total}/{total}" in result.stderr, result.stderr
