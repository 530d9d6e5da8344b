"""Input videos read back from real files (MP4, WebM, GIF, PNG folders) and arrays: cut, resample, resize, hash and
every bad input's one-line message."""

import subprocess

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from t2v_fast import Video
from t2v_fast.core.video_input import InputVideo, load_video, probe_video, resized_size
from t2v_fast.errors import UserError

FPS, FRAMES, WIDTH, HEIGHT, SIDE, STEP = 12, 24, 96, 48, 8, 3  # a 2 s clip; the square moves 3 px a frame


def moving_square(count=FRAMES, width=WIDTH, height=HEIGHT, step=STEP):
    """Frame i: black, with a white square whose left edge is at x = step * i."""
    frames = np.zeros((count, height, width, 3), np.uint8)
    for i in range(count):
        frames[i, 10 : 10 + SIDE, step * i : step * i + SIDE] = 255
    return frames


def positions(frames, step=STEP, scale=1.0):
    """Which source frame each frame shows, from the square's centre (robust to lossy codecs and resizing)."""
    found = []
    for frame in frames:
        weights = frame.astype(float).mean(axis=2)
        weights = np.where(weights > 128, weights, 0).sum(axis=0)
        centre = (weights * np.arange(frame.shape[1])).sum() / weights.sum()
        found.append(round((centre / scale - (SIDE - 1) / 2) / step))
    return found


def error_of(source, **options):
    with pytest.raises(UserError) as caught:
        load_video(source, **options)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.fixture(scope="module")
def mp4(tmp_path_factory):
    path = tmp_path_factory.mktemp("mp4") / "square.mp4"
    Video(frames=moving_square()).save(path, fps=FPS)
    return path


@pytest.fixture
def png_folder(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(moving_square(count=12)):
        Image.fromarray(frame).save(folder / f"frame_{i + 1}.png")  # unpadded: frame_10 sorts after frame_9
    (folder / "notes.txt").write_text("not a frame")
    return folder


def write_gif(path, frames, durations):
    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=durations, loop=0)
    return path


# Cutting and resampling.


def test_mp4_reads_every_frame_at_its_rate(mp4):
    video = load_video(mp4)
    assert isinstance(video, InputVideo)
    assert video.frames.shape == (FRAMES, HEIGHT, WIDTH, 3) and video.frames.dtype == np.uint8
    assert video.fps == pytest.approx(FPS)
    assert video.source == str(mp4)
    assert positions(video.frames) == list(range(FRAMES))


def test_cut_and_resample_pick_the_frame_shown_at_each_time(mp4):
    video = load_video(mp4, start=0.5, end=1.5, fps=4)
    assert video.fps == 4.0
    assert positions(video.frames) == [6, 9, 12, 15]  # times 0.5, 0.75, 1.0, 1.25 s at 12 fps


def test_resampling_takes_the_nearest_earlier_frame_never_a_later_one(mp4):
    # Times 0, 0.2, ..., 0.8 s are source frames 0, 2.4, 4.8, 7.2, 9.6: the nearest would be 0, 2, 5, 7, 10.
    assert positions(load_video(mp4, end=1.0, fps=5).frames) == [0, 2, 4, 7, 9]
    # A higher rate than the source's repeats frames.
    assert positions(load_video(mp4, end=0.25, fps=24).frames) == [0, 0, 1, 1, 2, 2]


def test_end_past_the_video_stops_at_its_end(mp4):
    assert positions(load_video(mp4, start=1.5, end=10).frames) == list(range(18, FRAMES))


def test_webm_vp9(tmp_path):
    encoders = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-encoders"], capture_output=True, text=True
    ).stdout
    if "libvpx-vp9" not in encoders:
        pytest.skip("the bundled ffmpeg has no libvpx-vp9 encoder")
    path = tmp_path / "square.webm"
    writer = imageio_ffmpeg.write_frames(
        str(path), (WIDTH, HEIGHT), fps=FPS, codec="libvpx-vp9", macro_block_size=2, ffmpeg_log_level="error"
    )
    writer.send(None)
    for frame in moving_square():
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    video = load_video(path, start=1.0, fps=6)
    assert video.frames.shape == (6, HEIGHT, WIDTH, 3)
    assert positions(video.frames) == [12, 14, 16, 18, 20, 22]
    facts = probe_video(path)
    assert (facts.width, facts.height, facts.fps) == (WIDTH, HEIGHT, FPS)


def test_gif_frames_keep_their_own_durations(tmp_path):
    path = write_gif(tmp_path / "square.gif", moving_square(count=4), [100, 300, 100, 100])  # starts 0, .1, .4, .5 s
    video = load_video(path)
    assert video.fps == pytest.approx(4 / 0.6)  # the average rate
    assert load_video(path, fps=10).frames.shape[0] == 6
    assert positions(load_video(path, fps=10).frames) == [0, 1, 1, 1, 2, 3]
    assert positions(load_video(path, start=0.35, end=0.45, fps=20).frames) == [1, 2]


def test_png_folder_sorts_by_name_and_plays_at_sequence_fps(png_folder):
    video = load_video(png_folder)
    assert video.fps == 8.0 and video.frames.shape == (12, HEIGHT, WIDTH, 3)
    assert positions(video.frames) == list(range(12))  # frame_10.png after frame_9.png
    np.testing.assert_array_equal(video.frames, moving_square(count=12))  # PNGs are lossless
    assert positions(load_video(png_folder, start=0.5, sequence_fps=4).frames) == list(range(2, 12))
    assert positions(load_video(png_folder, start=0.5).frames) == list(range(4, 12))


# Resizing.


def test_size_rule():
    assert resized_size(100, 60, 64) == (64, 40)  # 64 x 38.4 -> 40
    assert resized_size(60, 100, 64) == (40, 64)
    assert resized_size(100, 60, None) == (104, 64)  # 12.5 and 7.5 eighths round half up
    assert resized_size(96, 48, None) == (96, 48)
    assert resized_size(1920, 1080, 512) == (512, 288)
    assert resized_size(80, 20, 64) == (64, 16)
    with pytest.raises(ValueError):
        resized_size(400, 20, 64)  # the short side would be 3.2 px


def test_resize_keeps_aspect_with_lanczos(tmp_path):
    folder = tmp_path / "wide"
    folder.mkdir()
    for i, frame in enumerate(moving_square(count=3, width=100, height=60, step=10)):
        Image.fromarray(frame).save(folder / f"{i:03}.png")
    video = load_video(folder, resolution=64)
    assert video.frames.shape == (3, 40, 64, 3)
    assert positions(video.frames, step=10, scale=0.64) == [0, 1, 2]
    expected = np.asarray(Image.fromarray(moving_square(1, 100, 60)[0]).resize((64, 40), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(video.frames[0], expected)
    assert load_video(folder).frames.shape == (3, 64, 104, 3)


def test_our_own_mp4_is_not_resized(mp4):
    assert load_video(mp4, resolution=WIDTH).frames.shape[1:3] == (HEIGHT, WIDTH)
    assert load_video(mp4, resolution=48).frames.shape[1:3] == (24, 48)


# Content hashes.


def test_hash_is_of_the_content(mp4, tmp_path, png_folder):
    first = load_video(mp4)
    assert load_video(mp4, start=1.0, fps=2).sha256 == first.sha256  # the options do not change it
    copy = tmp_path / "copy.mp4"
    copy.write_bytes(mp4.read_bytes())
    assert load_video(copy).sha256 == first.sha256 and len(first.sha256) == 64
    changed = tmp_path / "changed.mp4"
    Video(frames=moving_square()[::-1].copy()).save(changed, fps=FPS)
    assert load_video(changed).sha256 != first.sha256

    folder_hash = load_video(png_folder).sha256
    assert load_video(png_folder).sha256 == folder_hash
    (png_folder / "notes.txt").write_text("other notes")  # not a frame: not hashed
    assert load_video(png_folder).sha256 == folder_hash
    (png_folder / "frame_12.png").rename(png_folder / "frame_13.png")  # same contents, another name
    renamed_hash = load_video(png_folder).sha256
    assert renamed_hash != folder_hash
    Image.fromarray(moving_square(count=1)[0]).save(png_folder / "frame_13.png")  # same name, other contents
    assert load_video(png_folder).sha256 not in (folder_hash, renamed_hash)


# Arrays.


def test_array_input_follows_the_same_rules():
    frames = moving_square(count=16, width=100, height=60)
    video = load_video(frames, start=0.5, end=1.5, resolution=64)  # 8 frames a second: frames 4 to 11
    assert video.frames.shape == (8, 40, 64, 3) and video.fps == 8.0
    assert positions(video.frames, scale=0.64) == list(range(4, 12))
    assert video.source == "array (16, 60, 100, 3)"
    assert positions(load_video(frames[:, :, :96], fps=4, sequence_fps=16).frames) == [0, 4, 8, 12]
    assert load_video(frames).sha256 == load_video(frames.copy()).sha256
    other = frames.copy()
    other[3, 0, 0, 0] = 1
    assert load_video(other).sha256 != load_video(frames).sha256
    assert load_video(frames.reshape(16, 100, 60, 3)).sha256 != load_video(frames).sha256  # same bytes, other shape
    assert "16 frames, more than max_frames=10" in error_of(frames, max_frames=10)


@pytest.mark.parametrize(
    "frames",
    [
        np.zeros((2, 32, 32, 3), np.float32),
        np.zeros((2, 32, 32, 4), np.uint8),
        np.zeros((32, 32, 3), np.uint8),
        np.zeros((2, 32, 32), np.uint8),
    ],
)
def test_arrays_of_another_kind_are_refused(frames):
    message = error_of(frames)
    assert message.startswith("input video array must be uint8 (F, H, W, 3) RGB, got ")
    assert str(frames.dtype) in message and str(tuple(frames.shape)) in message


def test_empty_array_and_other_objects_are_refused():
    assert error_of(np.zeros((0, 32, 32, 3), np.uint8)) == "input video array has no frames"
    assert "must be a path or a uint8 array" in error_of([[0, 1]])


# Bad input: one line naming the file and what is wrong.


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere.mp4"
    assert error_of(path) == f"input video {str(path)!r} does not exist"
    with pytest.raises(UserError, match="does not exist"):
        probe_video(path)


def test_not_a_video(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("these are notes, not a video\n")
    assert error_of(text) == (
        f"input video {str(text)!r} is not a video ffmpeg can read (another kind of file, or damaged)"
    )
    with pytest.raises(UserError, match="is not a video ffmpeg can read"):
        probe_video(text)
    fake_gif = tmp_path / "notes.gif"
    fake_gif.write_text("GIF? no\n")
    assert error_of(fake_gif) == f"input video {str(fake_gif)!r} is not a video (not a GIF image)"
    with pytest.raises(UserError, match=r"not a GIF image"):
        probe_video(fake_gif)
    other = tmp_path / "notes.txt"
    other.write_text("x")
    assert "is not a supported video (mp4, m4v, mov, webm, mkv, gif, or a folder of PNG frames)" in error_of(other)


def test_broken_png_in_a_folder(png_folder):
    (png_folder / "frame_5.png").write_text("not a png")
    assert error_of(png_folder) == f"input video {str(png_folder)!r}: frame 'frame_5.png' is not a PNG image"


def test_frames_of_another_size_in_a_png_folder(png_folder):
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(png_folder / "frame_7.png")
    assert (
        error_of(png_folder)
        == f"input video {str(png_folder)!r}: frame 'frame_7.png' is 48x32, not 96x48 like the first"
    )


def test_truncated_mp4(mp4, tmp_path):
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(mp4.read_bytes()[: mp4.stat().st_size * 2 // 3])
    assert "is not a video ffmpeg can read (another kind of file, or damaged)" in error_of(truncated)


def test_zero_frames(tmp_path, mp4, png_folder):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no frames here")
    assert error_of(empty) == f"input video {str(empty)!r} is a folder with no PNG frames in it"
    message = error_of(mp4, start=2.5)
    assert message == f"input video {str(mp4)!r}: the cut starting at 2.5 s gives no frames: the video is 2 s long"
    assert "gives no frames: the video is 1.5 s long" in error_of(png_folder, start=3, end=4)


def test_sizes_below_the_minimum(tmp_path):
    assert error_of(np.zeros((2, 12, 40, 3), np.uint8)) == (
        "input video array is 40x12, below the minimum of 16 px on each side"
    )
    message = error_of(np.zeros((2, 20, 400, 3), np.uint8), resolution=64)
    assert message == (
        "input video array is 400x20: its shorter side at resolution 64 would be 3.2 px, below the minimum of 16 px;"
        " use a larger resolution"
    )
    tiny = write_gif(tmp_path / "tiny.gif", np.zeros((2, 8, 8, 3), np.uint8), [100, 100])
    assert "is 8x8, below the minimum of 16 px" in error_of(tiny)


def test_more_frames_than_the_cap(mp4):
    assert error_of(mp4, max_frames=10) == (
        f"input video {str(mp4)!r}: the cut gives 24 frames, more than max_frames=10; "
        "set an earlier end or a lower fps (now 12)"
    )
    assert load_video(mp4, max_frames=24).frames.shape[0] == 24
    assert load_video(mp4, end=1.5, fps=6, max_frames=9).frames.shape[0] == 9


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"start": 1.0, "end": 1.0}, "input video start (1.0 s) must be before its end (1.0 s)"),
        ({"start": 2.0, "end": 1.0}, "input video start (2.0 s) must be before its end (1.0 s)"),
        ({"start": -0.5}, "input video start must be a number of seconds >= 0, got -0.5"),
        ({"fps": 0}, "input video fps must be a number > 0, got 0"),
        ({"fps": -2.0}, "input video fps must be a number > 0, got -2.0"),
        ({"max_frames": 0}, "input video max_frames must be a whole number >= 1, got 0"),
        ({"resolution": 8}, "input video resolution must be a whole number of pixels >= 16, got 8"),
        ({"sequence_fps": 0.0}, "input video sequence_fps must be a number > 0, got 0.0"),
    ],
)
def test_bad_options_are_refused_before_reading(tmp_path, options, expected):
    assert error_of(tmp_path / "never-read.mp4", **options) == expected


# Probing the header.


def test_probe_reads_the_header_only(mp4, tmp_path, png_folder):
    facts = probe_video(mp4)
    assert (facts.width, facts.height, facts.fps) == (WIDTH, HEIGHT, FPS)
    assert facts.duration == pytest.approx(2.0, abs=0.1)
    assert facts.frames_estimate == pytest.approx(FRAMES, abs=1)

    gif = probe_video(write_gif(tmp_path / "square.gif", moving_square(count=5), 50))
    assert (gif.width, gif.height, gif.fps, gif.frames_estimate) == (WIDTH, HEIGHT, 20.0, 5)
    assert gif.duration == pytest.approx(0.25)

    folder = probe_video(png_folder, sequence_fps=6)
    assert (folder.width, folder.height, folder.fps, folder.frames_estimate, folder.duration) == (96, 48, 6, 12, 2.0)
