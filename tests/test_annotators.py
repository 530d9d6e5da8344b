"""Annotators (`t2v_fast.annotators`): control maps equal to what their references compute from the same frames."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

from t2v_fast.annotators import (
    ANNOTATORS,
    DEPTH_PRESETS,
    DPT_HYBRID_MIDAS_CONFIG,
    DepthEstimator,
    annotate,
    clear_depth_cache,
    load_depth_estimator,
    save_depth_estimator,
)
from t2v_fast.errors import UserError

TINY = "dpt-tiny-random"


def moving_square_video(
    frames: int = 4, height: int = 64, width: int = 80, size: int = 16, step: int = 8, fade: bool = False
) -> np.ndarray:
    """A white square moving right on black, `step` pixels a frame; with `fade`, the background brightens from frame
    to frame and has a horizontal ramp, so frames differ in their range as well as their layout."""
    video = np.zeros((frames, height, width, 3), dtype=np.uint8)
    for i in range(frames):
        if fade:
            ramp = np.linspace(0, 60, width) + 25 * i
            video[i] = ramp.astype(np.uint8)[None, :, None]
        top, left = (height - size) // 2, 4 + i * step
        video[i, top : top + size, left : left + size] = 255
    return video


def reference_depth(frames: np.ndarray, model: DPTForDepthEstimation, per_frame: bool) -> np.ndarray:
    """What the depth annotator must give, computed one frame at a time: Intel/dpt-hybrid-midas's preprocessing (at the
    tiny preset's 64×64), bicubic resize to the frame, min-max over the video (or the frame), 3 channels."""
    processor = DPTImageProcessor(
        size={"height": 64, "width": 64}, resample=2, keep_aspect_ratio=False, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    depths = []
    with torch.no_grad():
        for frame in frames:
            pixel_values = processor(images=frame, return_tensors="pt")["pixel_values"]
            predicted = model(pixel_values=pixel_values).predicted_depth
            depths.append(
                torch.nn.functional.interpolate(
                    predicted.unsqueeze(1), size=frame.shape[:2], mode="bicubic", align_corners=False
                )[0, 0].numpy()
            )
    depth = np.stack(depths).astype(np.float64)
    axes = (1, 2) if per_frame else None
    low, high = depth.min(axis=axes, keepdims=True), depth.max(axis=axes, keepdims=True)
    gray = (depth - low) / (high - low) * 255
    return np.repeat(gray[..., None], 3, axis=-1)


@pytest.fixture(scope="module")
def tiny() -> DepthEstimator:
    return load_depth_estimator(TINY, "cpu")


def test_canny_is_opencv_canny_of_each_rgb_frame_in_three_channels():
    video = moving_square_video()
    maps = annotate(video, "canny")
    assert maps.shape == video.shape and maps.dtype == np.uint8
    for i, frame in enumerate(video):
        expected = cv2.Canny(frame, 100, 200)
        for channel in range(3):
            np.testing.assert_array_equal(maps[i, :, :, channel], expected)
        columns = np.nonzero(maps[i, :, :, 0])[1]
        assert columns.size > 0
        # The edges follow the square: its left and right sides, one pixel either way.
        left = 4 + i * 8
        assert left - 1 <= columns.min() <= left + 1 and left + 14 <= columns.max() <= left + 16


def test_canny_thresholds_change_the_edges():
    video = moving_square_video(frames=2)
    video[:, 4:12, 4:12] = 30  # a dim square: its gradient is below the default high threshold
    default = annotate(video, "canny")
    sensitive = annotate(video, "canny", canny_low=10, canny_high=50)
    for i, frame in enumerate(video):
        np.testing.assert_array_equal(sensitive[i, :, :, 0], cv2.Canny(frame, 10, 50))
    assert not default[:, 2:14, 2:14].any()
    assert sensitive[:, 2:14, 2:14].any()


def test_canny_sees_edges_between_colours_of_equal_brightness():
    """RGB goes to Canny directly: red next to a green of the same gray level is an edge (it would not be in gray)."""
    frame = np.zeros((1, 32, 32, 3), dtype=np.uint8)
    frame[0, :, :16] = (255, 0, 0)
    frame[0, :, 16:] = (0, 130, 0)
    gray = cv2.cvtColor(frame[0], cv2.COLOR_RGB2GRAY)
    assert np.ptp(gray) <= 1 and not cv2.Canny(gray, 100, 200).any()
    assert annotate(frame, "canny")[0, :, 15:17, 0].any(axis=1).all()  # the edge, on every row


def test_none_returns_the_frames_unchanged():
    video = moving_square_video()
    maps = annotate(video, "none")
    np.testing.assert_array_equal(maps, video)
    assert not np.shares_memory(maps, video)


def test_depth_matches_the_reference_over_the_whole_video(tiny):
    video = moving_square_video(frames=10, fade=True)  # more frames than one batch of the model
    maps = annotate(video, "depth", depth_model=TINY, device="cpu")
    assert maps.shape == video.shape and maps.dtype == np.uint8
    expected = reference_depth(video, tiny.model, per_frame=False)
    assert np.abs(maps.astype(np.float64) - expected).max() <= 1
    assert maps.min() == 0 and maps.max() == 255
    np.testing.assert_array_equal(maps[..., 0], maps[..., 2])


def test_depth_per_frame_scales_each_frame_by_its_own_range(tiny):
    video = moving_square_video(frames=4, fade=True)
    whole = annotate(video, "depth", depth_model=TINY, device="cpu")
    per_frame = annotate(video, "depth", depth_model=TINY, device="cpu", depth_per_frame=True)
    expected = reference_depth(video, tiny.model, per_frame=True)
    assert np.abs(per_frame.astype(np.float64) - expected).max() <= 1
    assert (per_frame.min(axis=(1, 2, 3)) == 0).all() and (per_frame.max(axis=(1, 2, 3)) == 255).all()
    assert np.abs(per_frame.astype(int) - whole).max() > 5


def test_saved_preset_loads_with_from_pretrained_and_gives_the_same_maps(tmp_path, tiny, monkeypatch):
    folder = save_depth_estimator(TINY, tmp_path / "dpt")
    model = DPTForDepthEstimation.from_pretrained(folder)
    processor = DPTImageProcessor.from_pretrained(folder)
    assert processor.size == {"height": 64, "width": 64} and list(processor.image_mean) == [0.5] * 3
    saved, preset = model.state_dict(), tiny.model.state_dict()
    assert saved.keys() == preset.keys()
    for name in preset:
        assert torch.equal(saved[name], preset[name]), name
    video = moving_square_video()
    from_folder = annotate(video, "depth", depth_model=str(folder), device="cpu")
    np.testing.assert_array_equal(from_folder, annotate(video, "depth", depth_model=TINY, device="cpu"))
    # One load per folder, however it is spelled.
    monkeypatch.chdir(tmp_path)
    assert load_depth_estimator("dpt", "cpu") is load_depth_estimator(folder, "cpu")


def test_depth_models_load_once_and_presets_are_deterministic(tiny):
    assert load_depth_estimator(TINY, "cpu") is tiny
    before = torch.random.get_rng_state()
    clear_depth_cache()
    rebuilt = load_depth_estimator(TINY, "cpu")
    assert rebuilt is not tiny
    assert torch.equal(torch.random.get_rng_state(), before)  # the preset's seed leaves the caller's RNG alone
    for name, tensor in tiny.model.state_dict().items():
        assert torch.equal(rebuilt.model.state_dict()[name], tensor), name


def test_dpt_hybrid_random_is_dpt_hybrid_midas():
    config, processor = DEPTH_PRESETS["dpt-hybrid-random"]
    assert config is DPT_HYBRID_MIDAS_CONFIG
    assert processor["size"] == {"height": 384, "width": 384}
    assert processor["image_mean"] == processor["image_std"] == [0.5] * 3
    with torch.device("meta"):  # the architecture without its half a gigabyte of weights
        model = DPTForDepthEstimation(DPTConfig(**config))
    built = model.config
    assert built.is_hybrid and built.backbone_config.model_type == "bit" and built.readout_type == "project"
    assert (built.hidden_size, built.num_hidden_layers, built.image_size) == (768, 12, 384)
    assert list(built.neck_hidden_sizes) == [256, 512, 768, 768]
    assert list(built.backbone_out_indices) == [2, 5, 8, 11]
    # BiT's stage widths feed the neck's first two levels and the ViT's patch embedding.
    assert list(model.dpt.embeddings.backbone.channels) == [256, 512, 1024]
    assert 120e6 < sum(p.numel() for p in model.parameters()) < 125e6  # DPT-Hybrid's size


@pytest.mark.slow
def test_dpt_hybrid_random_runs_at_full_size():
    video = moving_square_video(frames=1, fade=True)
    maps = annotate(video, "depth", depth_model="dpt-hybrid-random", device="cpu")
    assert maps.shape == video.shape and maps.min() == 0 and maps.max() == 255
    clear_depth_cache()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"annotator": "sobel"}, "unknown annotator 'sobel'; choose one of: canny, depth, none"),
        ({"canny_low": -1}, "canny_low must be an integer in [0, 255], got -1"),
        ({"canny_high": 256}, "canny_high must be an integer in [0, 255], got 256"),
        ({"canny_low": 50.5}, "canny_low must be an integer in [0, 255], got 50.5"),
        ({"canny_high": "200"}, "canny_high must be an integer in [0, 255], got '200'"),
        ({"canny_low": True}, "canny_low must be an integer in [0, 255], got True"),
        ({"canny_low": 201, "canny_high": 200}, "canny_low (201) must not exceed canny_high (200)"),
        ({"frames": moving_square_video().astype(np.float32)}, "frames must be uint8 (F, H, W, 3), got dtype float32"),
        ({"frames": moving_square_video()[0]}, "got shape (64, 80, 3)"),
        ({"frames": np.zeros((2, 8, 8, 4), np.uint8)}, "got shape (2, 8, 8, 4)"),
        ({"frames": np.zeros((0, 8, 8, 3), np.uint8)}, "at least one frame, got shape (0, 8, 8, 3)"),
        ({"frames": [[[[0, 0, 0]]]]}, "frames must be a numpy uint8 array of shape (F, H, W, 3), got list"),
        ({"annotator": "depth", "depth_model": "dpt-huge-random"}, "'dpt-huge-random' is not a preset"),
        ({"annotator": "depth", "depth_model": "/no/such/folder"}, "'/no/such/folder' is not a preset"),
        ({"annotator": "depth", "depth_model": TINY, "device": "gpu:x"}, "invalid device 'gpu:x'"),
    ],
)
def test_bad_input_is_a_user_error_naming_the_problem(kwargs, message):
    arguments = {"frames": moving_square_video(frames=1), "annotator": "canny", **kwargs}
    with pytest.raises(UserError) as error:
        annotate(**arguments)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_unknown_preset_error_lists_the_presets():
    with pytest.raises(UserError, match=r"dpt-hybrid-random, dpt-tiny-random"):
        load_depth_estimator("dpt-huge-random", "cpu")


def test_a_folder_without_a_model_is_a_user_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"^cannot load depth model from .*empty: "):
        load_depth_estimator(tmp_path / "empty", "cpu")


def test_a_hub_failure_is_one_line(monkeypatch):
    def unreachable(*args: object, **kwargs: object) -> None:
        raise RuntimeError("503 Service Unavailable\ntraceback details")

    monkeypatch.setattr(DPTForDepthEstimation, "from_pretrained", unreachable)
    with pytest.raises(UserError) as error:
        load_depth_estimator("someone/depth-model", "cpu")
    assert str(error.value) == "cannot fetch depth model 'someone/depth-model' from the hub: 503 Service Unavailable"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_user_error():
    with pytest.raises(UserError, match="CUDA is not available"):
        load_depth_estimator(TINY, "cuda")


def test_writing_where_no_folder_can_be_is_a_user_error(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match=r"^cannot write depth model to "):
        save_depth_estimator(TINY, blocker / "dpt")


def test_every_annotator_gives_maps_of_the_input_size():
    video = moving_square_video(frames=2, height=40, width=56)
    for annotator in ANNOTATORS:
        maps = annotate(video, annotator, depth_model=TINY, device="cpu")
        assert maps.shape == video.shape and maps.dtype == np.uint8, annotator
