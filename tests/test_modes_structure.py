"""The seams a new mode crosses: "already rendered" by request hash (old nights stay done), family and task read from
the checkpoint (an Instruct-Pix2Pix UNet is not taken for Text2Video-Zero, nor the reverse), QC outside `generate`,
and a stochastic scheduler's step noise drawn from each video's generator."""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from conftest import max_pixel_diff

from t2v_fast.bulk.manifest import parse_manifest
from t2v_fast.bulk.rendering import request_sha256, split_done
from t2v_fast.core import families
from t2v_fast.core.params import ParamRequest, param
from t2v_fast.errors import UserError
from t2v_fast.loading import describe_model

# Written by t2v-fast before the request hash existed (commit 891c1b0): sidecars recording the whole parameter dict.
OLD_NIGHTS = Path(__file__).parent / "data" / "night-before-request-hash"
OLD_NIGHT_MODELS = {"text2video-zero": "tiny-random", "modelscope": "modelscope-tiny-random"}


def _split(folder: Path, model: str) -> tuple[list, list]:
    card = describe_model(model)
    parsed = parse_manifest(folder / "manifest.csv", ParamRequest.of(height=64, width=64), card)
    assert not parsed.rejected
    return split_done(parsed.rows, folder, card.model_id, card.weights_sha256)


@pytest.mark.parametrize("family", OLD_NIGHT_MODELS)
def test_a_night_rendered_before_the_request_hash_is_still_done(family, tmp_path):
    night = shutil.copytree(OLD_NIGHTS / family, tmp_path / family)
    todo, skipped = _split(night, OLD_NIGHT_MODELS[family])
    assert todo == [] and [r.status for r in skipped] == ["skipped"] * len(skipped) and skipped
    # ... and a row whose request changed is not: the hash is not blind.
    manifest = night / "manifest.csv"
    manifest.write_text(manifest.read_text().replace(",2,2", ",3,2", 1))
    todo, _ = _split(night, OLD_NIGHT_MODELS[family])
    assert len(todo) == 1


def test_a_parameter_added_at_its_default_leaves_old_nights_done(tmp_path, monkeypatch):
    """What "Guided video" will do: Text2Video-Zero gains `controlnet_scale` (default 1.0)."""

    @dataclasses.dataclass(frozen=True)
    class WithControl(families.TEXT2VIDEO_ZERO.params):
        controlnet_scale: float = param(float, "ControlNet conditioning scale", "ControlNet scale", default=1.0)

    grown = dataclasses.replace(families.TEXT2VIDEO_ZERO, params=WithControl)
    monkeypatch.setitem(families.FAMILIES, grown.name, grown)
    monkeypatch.setattr(families, "TEXT2VIDEO_ZERO", grown)
    night = shutil.copytree(OLD_NIGHTS / "text2video-zero", tmp_path / "night")
    card = describe_model("tiny-random")
    assert card.resolve(ParamRequest()).controlnet_scale == 1.0
    todo, skipped = _split(night, "tiny-random")
    assert todo == [] and len(skipped) == 2
    # Set to another value, it is part of the request.
    recorded = json.loads((night / "panda.json").read_text())
    other = {**recorded["params"], "controlnet_scale": 0.5}
    assert request_sha256("a panda playing guitar", "", 3, other, "text2video-zero") != request_sha256(
        "a panda playing guitar", "", 3, recorded["params"], "text2video-zero"
    )


@pytest.fixture
def folder_shaped_like(tiny_folder, tmp_path):
    def edit(component: str, **changes) -> Path:
        folder = shutil.copytree(tiny_folder, tmp_path / "edited")
        path = folder / (f"{component}/config.json" if component != "model_index" else "model_index.json")
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
        return folder

    return edit


@pytest.mark.parametrize(
    ("component", "changes", "message"),
    [
        (
            "model_index",
            {"_class_name": "StableDiffusionInstructPix2PixPipeline"},
            "says it is a StableDiffusionInstructPix2PixPipeline (model_index.json), but its UNet is a Text2Video-Zero",
        ),
        ("model_index", {"controlnet": ["diffusers", "ControlNetModel"]}, "a ControlNet pipeline folder"),
        ("unet", {"in_channels": 5}, "taking 5 input channels fits no family for a VAE of 4 latent channels"),
    ],
    ids=["pix2pix pipeline, 4-channel unet", "controlnet", "odd channels"],
)
def test_a_checkpoint_no_family_runs_as_it_is_is_refused_before_loading(
    folder_shaped_like, cli, component, changes, message
):
    folder = folder_shaped_like(component, **changes)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        describe_model(str(folder))
    result = cli("generate", "a cat", "--model", str(folder), "--out", str(folder / "x.mp4"), "--quiet")
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.splitlines()) == 1
    assert not (folder / "x.mp4").exists()


def test_an_8_channel_unet_is_read_as_instruct_pix2pix_and_asks_for_a_video(folder_shaped_like, cli):
    """The UNet's input channels tell Instruct-Pix2Pix apart where its class does not (both are SD 1.5's)."""
    folder = folder_shaped_like("unet", in_channels=8)
    card = describe_model(str(folder))
    assert (card.family, card.task) == ("instruct-pix2pix", "edit")
    result = cli("generate", "a cat", "--model", str(folder), "--out", str(folder / "x.mp4"), "--quiet")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert "is an Instruct-Pix2Pix model (video editing): give the input video to edit" in result.stderr


def test_the_task_is_read_from_the_checkpoint_and_recorded(pipeline):
    assert (pipeline.card.family, pipeline.card.task) == ("text2video-zero", "text-to-video")
    video = pipeline.generate_video("a cat", frames=2, steps=2, height=64, width=64, seed=0, progress=False)
    assert video.metadata["model"]["task"] == "text-to-video"
    # QC is a night's work (the batch layer measures it as it saves): generating a video does not run it.
    assert "qc" not in video.metadata


def test_a_stochastic_scheduler_draws_each_videos_noise_from_its_own_generator():
    """Euler ancestral adds fresh noise at every step (Instruct-Pix2Pix runs it): with one generator per video, video
    k of a batch still equals generating it alone with its seed."""
    from diffusers import EulerAncestralDiscreteScheduler

    from t2v_fast.loading import load_pipeline

    pipeline = load_pipeline("modelscope-tiny-random", device="cpu", dtype="float32")
    pipeline.scheduler = EulerAncestralDiscreteScheduler.from_config(pipeline.scheduler.config)
    small = dict(frames=2, steps=3, height=64, width=64, progress=False)
    batch = pipeline.generate(["a kite", "a kite"], seed=[4, 9], **small)
    alone = pipeline.generate_video("a kite", seed=9, **small)
    # Batched matmuls accumulate in another order than single-video ones: bound 2/255, as for every batch.
    assert max_pixel_diff(batch[1].frames, alone.frames) <= 2
    assert max_pixel_diff(batch[0].frames, batch[1].frames) > 20


# What request format 1 leaves out of the hash: each family's fixed and family defaults. A changed default changes
# what an unset parameter means, and sidecars of this format would wrongly still match; a new parameter's default
# joins the table and leaves them matching.
# Fast mode's parameters (added after format 1 was written) default to the exact path, so no earlier hash changes.
FAST_MODE_OFF = {"cache_interval": 1, "cache_branch": 0}
FORMAT_1_DEFAULTS = {
    "text2video-zero": {
        "frames": 8,
        "steps": 50,
        "guidance": 7.5,
        "fps": 4.0,
        **FAST_MODE_OFF,
        "motion_x": 12.0,
        "motion_y": 12.0,
    },
    "modelscope": {"frames": 16, "steps": 50, "guidance": 9.0, "fps": 8.0, **FAST_MODE_OFF},
    # Added after format 1 was written, so no earlier sidecar has its hash: its defaults from its first night on.
    "instruct-pix2pix": {
        "steps": 50,
        "guidance": 7.5,
        **FAST_MODE_OFF,
        "start": 0.0,
        "image_guidance": 1.5,
        "chunk_size": 8,
    },
}


def test_the_defaults_the_hash_leaves_out_are_those_of_its_format():
    from t2v_fast.bulk.rendering import REQUEST_FORMAT
    from t2v_fast.core.params import default_of, param_infos

    found = {
        name: {
            i.name: default_of(i, f.defaults) for i in param_infos(f.params) if default_of(i, f.defaults) is not None
        }
        for name, f in families.FAMILIES.items()
    }
    assert REQUEST_FORMAT == 1 and found == FORMAT_1_DEFAULTS, (
        "a default changed: bump REQUEST_FORMAT (and this table); a parameter was added: add its default here"
    )


def test_a_whole_number_written_for_a_float_parameter_hashes_as_that_float():
    """An earlier version wrote a flow's `defaults={"motion_x": 4}` as 4 in the sidecar; the row now resolves 4.0."""
    recorded = {"frames": 2, "steps": 2, "motion_x": 4, "guidance": 7}
    resolved = {"frames": 2, "steps": 2, "motion_x": 4.0, "guidance": 7.0}
    assert request_sha256("a", "", 1, recorded, "text2video-zero") == request_sha256(
        "a", "", 1, resolved, "text2video-zero"
    )
    assert request_sha256("a", "", 1, recorded, "text2video-zero") != request_sha256(
        "a", "", 2, resolved, "text2video-zero"
    )
