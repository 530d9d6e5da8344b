"""MP4 + JSON sidecar written atomically and read back with a real decoder."""

import json

import imageio_ffmpeg
import numpy as np
import pytest

import t2v_fast.core.video as video_module
from t2v_fast import Video, __version__
from t2v_fast.errors import UserError

SIDECAR_FIELDS = {
    "prompt",
    "negative_prompt",
    "seed",
    "params",
    "model",
    "backend",
    "device",
    "dtype",
    "timings",
    "t2v_fast_version",
}
PARAM_FIELDS = {
    "frames",
    "steps",
    "guidance",
    "height",
    "width",
    "motion_x",
    "motion_y",
    "t0",
    "t1",
    "chunk_size",
    "fps",
    "cache_interval",  # fast mode (DeepCache); 1: the exact path
    "cache_branch",
}


def read_mp4(path):
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    frames = [np.frombuffer(f, np.uint8).reshape(height, width, 3) for f in reader]
    return meta, np.stack(frames)


@pytest.fixture(scope="module")
def video(pipeline):
    return pipeline.generate_video(
        "a red car", negative_prompt="rain", seed=4, frames=12, height=64, width=96, steps=6, fps=6, progress=False
    )


def test_mp4_reads_back_with_frames_size_and_fps(video, tmp_path):
    path = video.save(tmp_path / "car.mp4")
    meta, frames = read_mp4(path)
    assert frames.shape == (12, 64, 96, 3)
    assert meta["fps"] == pytest.approx(6.0)
    assert meta["codec"] == "h264"
    # H.264 at CRF 16 is lossy but close: mean error of a few levels on noisy random-model frames.
    assert np.abs(frames.astype(float) - video.frames.astype(float)).mean() < 12


def test_sidecar_has_every_field(video, tmp_path):
    video.save(tmp_path / "car.mp4", fps=3)
    sidecar = json.loads((tmp_path / "car.json").read_text())
    assert sidecar == video.metadata
    assert set(sidecar) == SIDECAR_FIELDS
    assert set(sidecar["params"]) == PARAM_FIELDS
    assert sidecar["prompt"] == "a red car" and sidecar["negative_prompt"] == "rain" and sidecar["seed"] == 4
    assert sidecar["params"]["fps"] == 3.0 and sidecar["params"]["t0"] is not None
    assert sidecar["model"]["id"].endswith("tiny") and len(sidecar["model"]["weights_sha256"]) == 64
    assert (sidecar["backend"], sidecar["dtype"], sidecar["device"]) == ("torch", "float32", "cpu")
    assert {"encode_text_s", "denoise_s", "decode_s", "total_s"} <= set(sidecar["timings"])
    assert sidecar["t2v_fast_version"] == __version__
    assert read_mp4(tmp_path / "car.mp4")[0]["fps"] == pytest.approx(3.0)


def test_failed_write_leaves_previous_output_and_no_temp_file(video, tmp_path, monkeypatch):
    target = tmp_path / "car.mp4"
    target.write_bytes(b"previous night's video")

    def broken_writer(frames, path, fps):
        path.write_bytes(b"half a video")
        raise OSError("disk full")

    monkeypatch.setattr(video_module, "write_mp4", broken_writer)
    with pytest.raises(OSError, match="disk full"):
        video.save(target)
    assert target.read_bytes() == b"previous night's video"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["car.mp4"]


def test_unwritable_outputs_are_refused_before_work(tmp_path):
    clip = Video(frames=np.zeros((1, 8, 8, 3), np.uint8))
    with pytest.raises(UserError, match="does not exist"):
        clip.save(tmp_path / "missing" / "a.mp4")
    with pytest.raises(UserError, match=r"must end in \.mp4"):
        clip.save(tmp_path / "a.gif")
