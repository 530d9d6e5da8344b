"""The web app in a real headless Chromium (Debian's), and its API through gradio_client; a real server process."""

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import CLI, run_cli
from prefect_cluster import free_port
from test_video_output import read_mp4

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# `make screenshots` sets this to docs/ to refresh the README's pictures; a plain test run writes them to a temporary
# folder, never over tracked files.
SCREENSHOTS = os.environ.get("T2V_FAST_SCREENSHOTS")
pytestmark = pytest.mark.server  # every test here talks to the `app` server process
browser_test = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")

NIGHT = "id,prompt,seed,frames\ncat,a cat on a sofa,1,\ndog,a dog in the snow,2,5\nbad,a bird,x,\n"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """`t2v-fast ui` on a free loopback port, its --out holding a night rendered by `t2v-fast batch`."""
    out = tmp_path_factory.mktemp("ui-out")
    manifest = out / "night.csv"
    manifest.write_text(NIGHT)
    run_cli("batch", str(manifest), "--out", str(out / "night"), "--frames", "4", "--steps", "4", check=True)
    port = free_port()
    log = (out / "ui.log").open("w")
    server = subprocess.Popen(
        [*CLI, "ui", "--port", str(port), "--out", str(out)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                break
        except OSError:
            time.sleep(0.5)
    else:
        raise AssertionError((out / "ui.log").read_text())
    yield url, out
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(30)


def test_the_port_in_use_is_a_clear_error(app, tmp_path):
    url, _ = app
    port = url.rsplit(":", 1)[1].strip("/")
    result = run_cli("ui", "--port", port, "--out", str(tmp_path))
    assert result.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_generate_through_the_api(app, tmp_path):
    from gradio_client import Client

    url, _ = app
    client = Client(url, verbose=False)
    assert "/generate" in client.view_api(return_format="dict")["named_endpoints"]
    # prompt, model, negative prompt, seed, videos per prompt, then the parameters in `all_params()` order: frames,
    # steps, guidance, height, width, fps, motion_x, motion_y, t0, t1, chunk_size, then fast mode's cache_interval and
    # cache_branch (None: the model's default).
    arguments = ["a lighthouse at dusk", "tiny-random", "", 11, 1, 5, 4, 7.5, 48, 80, 5, 12, 12, None, None, None, 2, 0]
    path, metadata, files = client.predict(*arguments, api_name="/generate")
    meta, frames = read_mp4(Path(path))
    assert frames.shape == (5, 48, 80, 3) and meta["fps"] == pytest.approx(5.0)
    assert metadata["seed"] == 11 and metadata["params"]["frames"] == 5 and len(files) == 1
    assert metadata["params"]["cache_interval"] == 2  # fast mode, through the API


def test_generate_with_the_prompt_alone(app):
    """Every `/generate` input but the prompt is optional, by name: empty is the model's default (guided video's
    parameters are not among them: they belong to `/guided`)."""
    from gradio_client import Client

    url, _ = app
    client = Client(url, verbose=False)
    parameters = client.view_api(return_format="dict")["named_endpoints"]["/generate"]["parameters"]
    names = [p["parameter_name"] for p in parameters]
    assert names[:6] == ["prompt", "model", "negative_prompt", "seed", "videos_per_prompt", "frames"]
    assert names[-2:] == ["cache_interval", "cache_branch"] and "controlnet_scale" not in names
    assert [p["parameter_has_default"] for p in parameters] == [False] + [True] * (len(names) - 1)
    path, metadata, _ = client.predict("a cat", steps=2, api_name="/generate")  # 2 steps: the default 50 take long
    _, frames = read_mp4(Path(path))
    assert frames.shape == (8, 64, 64, 3) and metadata["params"]["steps"] == 2  # tiny-random's 8 frames
    # An empty field is the chosen model's default, not the first model's.
    _, metadata, _ = client.predict("a kite", model="modelscope-tiny-random", steps=2, api_name="/generate")
    assert metadata["params"]["frames"] == 16 and metadata["model"]["family"] == "modelscope"


def _square_clip(path):
    """3 frames, 64×64, of a white square moving right: a control video with edges that move."""
    from t2v_fast.core.video import write_mp4

    frames = np.zeros((3, 64, 64, 3), np.uint8)
    for index in range(3):
        frames[index, 20:40, 10 + 10 * index : 30 + 10 * index] = 255
    write_mp4(frames, path, 4.0)
    return path


def test_guided_through_the_api(app, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    from t2v_fast.core.video_input import load_video

    url, _ = app
    client = Client(url, verbose=False)
    clip = handle_file(str(_square_clip(tmp_path / "square.mp4")))
    maps = client.predict(clip, api_name="/preview_control")
    assert [m["caption"] for m in maps] == ["frame 0", "frame 1", "frame 2"]
    # The video and the prompt; the rest is the model's default (tiny-random's ControlNet, Canny), steps aside.
    path, control, metadata = client.predict(clip, "a lighthouse", steps=2, seed=3, api_name="/guided")
    assert load_video(path).frames.shape == (3, 64, 64, 3)
    edges = load_video(control).frames
    assert edges.shape == (3, 64, 64, 3) and edges.max() > 128  # the square's Canny edges
    assert metadata["seed"] == 3 and metadata["params"]["annotator"] == "canny"
    assert metadata["model"]["task"] == "guided"
    with pytest.raises(AppError, match="canny_low must not exceed canny_high"):
        client.predict(clip, "a lighthouse", canny_low=250, canny_high=10, steps=2, api_name="/guided")


def _edit_clip(path):
    """3 frames, 48×48, of shapes moving across a gradient: a small video to edit."""
    from benchmarks.guided import moving_shape
    from t2v_fast.core.video import write_mp4

    write_mp4(moving_shape(3, 48, 48), path, 4.0)
    return path


def test_edit_through_the_api(app, tmp_path):
    """`/edit`: the video and the instruction are required, the rest by name; the edited video has the input's
    length and rate at the model's size, and its sidecar beside it under OUT/ui/."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    url, out = app
    client = Client(url, verbose=False)
    parameters = client.view_api(return_format="dict")["named_endpoints"]["/edit"]["parameters"]
    names = [p["parameter_name"] for p in parameters]
    edit = ["image_guidance", "guidance", "steps", "start", "end"]  # image guidance first, the cut last
    assert names == ["video", "prompt", "model", *edit, "seed", "negative_prompt"]
    assert [p["parameter_has_default"] for p in parameters] == [False, False] + [True] * (len(names) - 2)
    clip = handle_file(str(_edit_clip(tmp_path / "shapes.mp4")))
    path, metadata = client.predict(clip, "make it winter", steps=2, seed=5, api_name="/edit")
    meta, frames = read_mp4(Path(path))
    assert frames.shape == (3, 64, 64, 3) and meta["fps"] == pytest.approx(4.0)  # 48 px: the longer side at 64
    assert (
        metadata["seed"] == 5
        and metadata["model"]["task"] == "edit"
        and metadata["model"]["id"] == "pix2pix-tiny-random"
    )
    assert metadata["params"]["image_guidance"] == 1.5 and metadata["params"]["steps"] == 2  # the family's default
    (sidecar,) = (out / "ui").glob("*-edit-seed5.json")
    written = json.loads(sidecar.read_text())
    assert sidecar.with_suffix(".mp4").is_file() and len(written["video"]["sha256"]) == 64  # the input's hash
    # gradio_client fetches any {"path": ...} it receives, the sidecar's input video record too: the rest is equal.
    assert {k: v for k, v in written.items() if k != "video"} == {k: v for k, v in metadata.items() if k != "video"}
    with pytest.raises(AppError, match=r"image_guidance must be >= 1, got 0\.5"):
        client.predict(clip, "make it winter", image_guidance=0.5, steps=2, api_name="/edit")
    with pytest.raises(AppError, match="missing input video: upload the video to edit"):
        client.predict(None, "make it winter", steps=2, api_name="/edit")


def test_each_tab_offers_the_models_of_its_task(tmp_path):
    """Text to video offers no Instruct-Pix2Pix model, video editing only those (the tiny preset first), guided
    video Text2Video-Zero ones; by family, also for a model folder."""
    from t2v_fast.app import App, LoadedModel, model_choices
    from t2v_fast.core.presets import preset_configs

    folder = tmp_path / "models" / "my-pix2pix"  # its configs are all the choice reads (weights: when it loads)
    for name, config in preset_configs("pix2pix-tiny-random").items():
        (folder / name).mkdir(parents=True)
        (folder / name / "config.json").write_text(json.dumps(config))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionInstructPix2PixPipeline"}))
    served = App(model_choices([], tmp_path / "models"), LoadedModel("torch", "cpu", None), tmp_path)
    mine = str(folder)
    assert not any("pix2pix" in m for m in served.models) and "modelscope-tiny-random" in served.models
    assert served.edit_models == ["pix2pix-tiny-random", "pix2pix-random", mine]
    assert served.guided_models[0] == "tiny-random" and "modelscope-tiny-random" not in served.guided_models
    assert mine not in served.guided_models


def test_a_modelscope_model_takes_its_defaults_and_refuses_motion(app):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    url, _ = app
    client = Client(url, verbose=False)
    # Every field empty but steps: the family's defaults, and no motion.
    arguments = ["a kite", "modelscope-tiny-random", "", 5, 1, None, 3, None, None, None, None, None, None, None, None]
    arguments += [None, None, None]
    path, metadata, _ = client.predict(*arguments, api_name="/generate")
    meta, frames = read_mp4(Path(path))
    assert frames.shape == (16, 64, 64, 3) and meta["fps"] == pytest.approx(8.0)
    assert metadata["model"]["family"] == "modelscope" and metadata["params"]["guidance"] == 9.0
    arguments[11] = 4  # δx set: a Text2Video-Zero parameter
    with pytest.raises(AppError, match="motion_x is a Text2Video-Zero parameter"):
        client.predict(*arguments, api_name="/generate")


def _video_facts(page, selector):
    """Duration and size of the video element under `selector`, once the browser has read its metadata."""
    find = f"document.querySelector('{selector} video')"
    page.wait_for_function(
        f"() => {{ const v = {find}; return v && v.readyState >= 1 && v.duration > 0; }}", timeout=120_000
    )
    return page.evaluate(f"() => {{ const v = {find}; return [v.duration, v.videoWidth, v.videoHeight]; }}")


def _set(page, label, value):
    """Type into a field and leave it, so the app has the value before the next click (as a person would).

    A field that has just been shown (an accordion opening) can still be mounting and put back its initial value
    after the first fill: fill again until the field reads back what was typed.
    """
    field = page.get_by_label(label, exact=True)
    for _ in range(10):
        field.fill(value)
        field.blur()
        page.wait_for_timeout(300)
        if field.input_value() == value:
            return
    raise AssertionError(f"{label!r} reads {field.input_value()!r} after typing {value!r}")


def _field_reads(page, label, value):
    field = page.get_by_label(label, exact=True)
    for _ in range(100):
        if field.input_value() == value:
            return
        page.wait_for_timeout(200)
    raise AssertionError(f"{label!r} reads {field.input_value()!r}, expected {value!r}")


def _error_shown(page, text):
    page.get_by_text(text).first.wait_for(timeout=60_000)


@browser_test
def test_every_tab_in_a_real_browser(app, tmp_path):
    from playwright.sync_api import sync_playwright

    url, out = app
    shots = Path(SCREENSHOTS) if SCREENSHOTS else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        try:
            _walk_through_both_tabs(page, url, out, shots)
            _guide_a_video(page, _square_clip(tmp_path / "square.mp4"), shots)
            _edit_a_video(page, _edit_clip(tmp_path / "shapes.mp4"), shots)
        except Exception:  # leave what the page showed, for whoever reads the failure
            page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
            print(f"page at the failure ({tmp_path / 'failure.png'}):\n{page.locator('body').inner_text()[:3000]}")
            raise
        finally:
            browser.close()
    assert json.loads((out / "night" / "dog.json").read_text())["params"]["frames"] == 5


def _walk_through_both_tabs(page, url, out, shots):
    page.goto(url)

    # Bad input: a message in the page, and the app stays usable.
    page.get_by_role("button", name="Run").click()
    _error_shown(page, "missing prompt")
    _set(page, "Prompt", "a red kite over the sea")
    page.get_by_text("Advanced options").click()
    page.get_by_label("Frames (video length)", exact=True).wait_for()
    _set(page, "Frames (video length)", "0")
    page.get_by_role("button", name="Run").click()
    _error_shown(page, "frames must be >= 1")
    _set(page, "Model", "/no/such/model")
    _set(page, "Frames (video length)", "6")
    page.get_by_role("button", name="Run").click()
    _error_shown(page, "is not a preset")
    # Choosing a model puts its family's defaults in the form.
    _set(page, "Model", "modelscope-tiny-random")
    _field_reads(page, "Frames (video length)", "16")
    _field_reads(page, "Frames per second", "8")
    _field_reads(page, "Global translation δx", "")  # a parameter ModelScope does not take: empty
    _set(page, "Model", "tiny-random")
    _field_reads(page, "Frames (video length)", "8")
    _field_reads(page, "Global translation δx", "12")
    _set(page, "Frames (video length)", "6")

    _set(page, "Steps", "6")
    _set(page, "Seed (empty: random)", "7")
    page.get_by_role("button", name="Run").click()
    duration, width, height = _video_facts(page, "#result-video")
    assert (width, height) == (64, 64)
    assert duration == pytest.approx(6 / 4, abs=0.3)  # 6 frames at 4 fps
    page.get_by_text('"seed"').first.wait_for()
    page.screenshot(path=str(shots / "ui-generate.png"), full_page=True)

    page.get_by_role("tab", name="Night").click()
    _set(page, "Night folder, under the app's --out", "night")  # the name under the app's --out, as README says
    page.get_by_role("button", name="Load").click()
    page.get_by_text("flagged by QC").wait_for(timeout=60_000)
    body = page.locator("body").inner_text()
    assert "2 done" in body.replace("**", "") or "2\ndone" in body
    page.get_by_text("'x' is not an integer", exact=True).filter(visible=True).first.wait_for()  # rejected row
    page.get_by_text("dog", exact=True).filter(visible=True).first.click()
    duration, width, height = _video_facts(page, "#row-video")
    assert (width, height) == (64, 64) and duration == pytest.approx(5 / 4, abs=0.3)
    playing = page.evaluate(
        "async () => { const v = document.querySelector('#row-video video'); v.muted = true; await v.play();"
        " await new Promise(r => setTimeout(r, 400)); return [!v.paused, v.currentTime]; }"
    )
    assert playing[0] and playing[1] > 0
    page.get_by_text("a dog in the snow").first.wait_for()
    page.screenshot(path=str(shots / "ui-night.png"), full_page=True)


def _guide_a_video(page, clip, shots):
    """The guided tab: upload a control video, preview its control maps, run, and watch the guided video."""
    page.get_by_role("tab", name="Guided by a video").click()
    _field_reads(page, "ControlNet", "tiny-random-controlnet")  # the base preset's own, filled when the page opened
    page.locator("#control-video input[type=file]").set_input_files(str(clip))
    page.locator("#control-video video").wait_for(timeout=60_000)  # uploaded: the clip plays in its field
    page.get_by_role("button", name="Preview control maps").click()
    page.wait_for_function(
        "() => document.querySelectorAll('#control-maps img').length >= 3", timeout=60_000
    )  # its 3 frames' Canny edges
    _set(page, "Prompt (guided video)", "a lighthouse in the fog")
    page.get_by_text("Guided video options").click()
    page.get_by_label("Steps (guided video)", exact=True).wait_for()
    _set(page, "Steps (guided video)", "2")
    page.get_by_role("button", name="Run guided video").click()
    duration, width, height = _video_facts(page, "#guided-video")
    assert (width, height) == (64, 64) and duration == pytest.approx(3 / 4, abs=0.3)  # the clip's 3 frames at 4 fps
    _video_facts(page, "#guided-control")  # and the control maps it followed
    page.screenshot(path=str(shots / "ui-guided.png"), full_page=True)


def _edit_a_video(page, clip, shots):
    """The edit tab: upload a video, give an instruction, run, and watch the edited video."""
    page.get_by_role("tab", name="Edit a video").click()
    _field_reads(page, "Model (video editing)", "pix2pix-tiny-random")  # the tab's first model
    page.locator("#edit-source input[type=file]").set_input_files(str(clip))
    page.locator("#edit-source video").wait_for(timeout=60_000)  # uploaded: the clip plays in its field
    _set(page, "Instruction", "make it winter")
    page.get_by_text("Video editing options").click()
    page.get_by_label("Steps (video editing)", exact=True).wait_for()
    _set(page, "Steps (video editing)", "2")
    page.get_by_role("button", name="Run video editing").click()
    duration, width, height = _video_facts(page, "#edit-video")
    assert (width, height) == (64, 64) and duration == pytest.approx(3 / 4, abs=0.3)  # the clip's 3 frames at 4 fps
    page.get_by_text('"image_guidance"').first.wait_for()
    page.screenshot(path=str(shots / "ui-edit.png"), full_page=True)


def test_a_night_is_named_relative_to_the_served_folder(app):
    """README's `batch --out outputs/night` and `ui --out outputs` work together: the Night tab takes `night`."""
    import gradio as gr

    from t2v_fast.app import App, LoadedModel

    _, out = app
    served = App(["tiny-random"], LoadedModel("torch", "cpu", None), out)
    assert served.latest_night() == "night"  # what the tab shows first
    summary, table, rejected = served.load_night("night")
    assert "**2** done" in summary and "**1** rejected" in summary
    assert sorted(r[0] for r in table if r[2] == "done") == ["cat", "dog"] and rejected[0][:2] == ["4", "seed"]
    assert served.load_night(str(out / "night"))[0] == summary  # an absolute path under --out works too
    with pytest.raises(gr.Error, match="serves nights under"):
        served.load_night("../")
