"""`t2v-fast ui`: a Gradio web app to make a video from text, and a review room for a night's output.

Generate tab: a prompt, a model, and every generation parameter in a collapsed panel; a progress bar follows the
denoising steps; the result plays in the page with its sidecar and a download. One model stays loaded between
requests, and a queue runs one generation at a time (one GPU) with a bounded length. The same function is Gradio's
API endpoint `/generate`, whose every input but the prompt is optional (empty: the model's default). Guided tab:
a control video (its control maps previewed), a prompt, a Text2Video-Zero model and a ControlNet, and guided video's
parameters; its endpoint is `/guided`. Edit tab: an input video, an instruction and an Instruct-Pix2Pix model, and
video editing's parameters; its endpoint is `/edit`. Each tab offers the models whose family runs its task. Night
tab: a folder written by `t2v-fast batch` or the nightly flow: counts per status, a filterable table of rows (with
their QC verdicts), rejected rows with row and column, and a click on a row plays its video beside its prompt and
parameters. Bad input shows as a message in the page, never a stack trace.
"""

from __future__ import annotations

import contextlib
import csv
import inspect
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import gradio as gr

from t2v_fast.core.engine_dir import EngineDir
from t2v_fast.core.families import (
    EDIT,
    GUIDED,
    INSTRUCT_PIX2PIX,
    TEXT_TO_VIDEO,
    Task,
    all_params,
    defaults_by_family,
    family_of_unet,
    identify,
)
from t2v_fast.core.input_params import INPUT_TITLES, INPUT_VIDEO
from t2v_fast.core.models import read_config, read_model_index
from t2v_fast.core.params import ParamInfo, param_infos, raise_problems, request_problems
from t2v_fast.core.presets import CONTROLNET_OF_PRESET, CONTROLNET_PRESETS, PRESETS, preset_configs
from t2v_fast.errors import T2vFastError, UserError
from t2v_fast.families.guided.params import GUIDED_VIDEO
from t2v_fast.families.instruct_pix2pix.params import VIDEO_EDITING
from t2v_fast.loading import describe_model, load_pipeline

# The text-to-video parameters' fields, in this order in the form and in the `/generate` endpoint's arguments:
# `all_params()` but those of a request with an input video (its cut, guided video's, video editing's), which are
# listed last there, so the endpoint's positions stay as they were.
INPUT_SECTIONS = (INPUT_VIDEO, GUIDED_VIDEO, VIDEO_EDITING)
PARAMS = tuple(info for info in all_params() if info.section not in INPUT_SECTIONS)
# The input video's cut (start, end), which guided video and video editing take alike.
CUT_PARAMS = tuple(info for info in all_params() if info.section == INPUT_VIDEO)
# Guided video's own parameters (ControlNet scale, annotator, Canny thresholds), then the cut, in `/guided`'s
# arguments after the control video, the prompt, the model and the ControlNet (the order `/guided` has always had).
GUIDED_PARAMS = (*(info for info in all_params() if info.section == GUIDED_VIDEO), *CUT_PARAMS)
STEPS = next(info for info in PARAMS if info.name == "steps")
GUIDANCE = next(info for info in PARAMS if info.name == "guidance")
# Video editing's fields (image guidance, guidance, steps, cut), in `/edit`'s arguments after the input video, the
# instruction and the model.
EDIT_PARAMS = (*(info for info in all_params() if info.section == VIDEO_EDITING), GUIDANCE, STEPS, *CUT_PARAMS)
# The random-weight ControlNet and depth estimator that fit each base preset: the guided tab's defaults for it.
DEPTH_MODEL_OF_PRESET = {"tiny-random": "dpt-tiny-random", "sd15-random": "dpt-hybrid-random"}
PREVIEW_FRAMES = 8  # control maps shown by "Preview control maps", evenly over the cut
ROW_COLUMNS = ["id", "row", "status", "reason", "seconds", "qc"]
QUEUE_SIZE = 16


class LoadedModel:
    """The one pipeline kept in memory: loading another model replaces it, since one GPU holds one model."""

    def __init__(self, backend: str, device: str | None, dtype: str | None):
        self.backend, self.device, self.dtype = backend, device, dtype
        self.source: str | None = None
        self.pipeline: Any = None
        self.lock = threading.Lock()
        self.key: tuple[str, str | None, str | None] | None = None

    def get(self, source: str, controlnet: str | None = None, depth_model: str | None = None) -> Any:
        """The pipeline of `source` (with `controlnet`, a guided one whose depth annotator runs `depth_model`)."""
        key = (source, controlnet, depth_model)
        with self.lock:
            if key != self.key:
                options: dict[str, Any] = {"controlnet": controlnet} if controlnet else {}
                if controlnet and depth_model:
                    options["depth_model"] = depth_model
                self.pipeline = load_pipeline(
                    source, backend=self.backend, device=self.device, dtype=self.dtype, **options
                )
                self.source, self.key = source, key
            return self.pipeline


def model_choices(given: list[str], models_dir: Path | None) -> list[str]:
    """Presets, the models named on the command line, and diffusers or engine folders found in `models_dir` (never a
    model hub: the app works offline)."""
    found = []
    if models_dir and models_dir.is_dir():
        found = [
            str(folder)
            for folder in sorted(models_dir.iterdir())
            if (folder / "model_index.json").is_file() or (folder / "engine.json").is_file()
        ]
    return list(dict.fromkeys([*given, *PRESETS, *found]))


def models_for(task: Task, models: list[str]) -> list[str]:
    """The models a tab running `task` offers: those whose family runs it, and those whose family cannot be told
    without loading them (a hub id: Run says when it does not fit); all of them when none fits."""
    offered = [m for m in models if _family_name(m) in (*task.families, None)]
    return offered or models


def _family_name(model: str) -> str | None:
    """The family of a preset, or of a diffusers or engine folder, from its configs alone (offline); None for
    anything else, or what does not read as a model."""
    try:
        if model in PRESETS:
            configs = preset_configs(model)
            return family_of_unet(configs["unet"], configs["vae"]["latent_channels"]).name
        if EngineDir.is_engine_dir(model):
            return EngineDir.load(model, verify_hashes=False).card.family
        folder = Path(model)
        if (folder / "model_index.json").is_file():
            configs = {name: read_config(folder, name) for name in ("unet", "vae")}
            return identify(model, read_model_index(folder), configs["unet"], configs["vae"])[0].name
    except (T2vFastError, OSError, ValueError):
        pass
    return None


def guided_models(models: list[str]) -> list[str]:
    """The models the guided tab offers: Text2Video-Zero ones, the presets with a ControlNet preset of their own
    first."""
    return sorted(models_for(GUIDED, models), key=lambda m: m not in CONTROLNET_OF_PRESET)


def edit_models(models: list[str]) -> list[str]:
    """The models the edit tab offers: Instruct-Pix2Pix ones (the tiny preset before the full one), before those
    whose family cannot be told."""
    return sorted(models_for(EDIT, models), key=lambda m: _family_name(m) is None)


class App:
    def __init__(self, models: list[str], loaded: LoadedModel, out_dir: Path):
        self.models, self.loaded, self.out_dir = models_for(TEXT_TO_VIDEO, models), loaded, out_dir
        self.guided_models = guided_models(models)
        self.edit_models = edit_models(models)
        self.emptied = 0  # number fields the page empties when it opens (`build`)

    def generate(
        self,
        prompt: str,
        model: str | None = None,
        negative_prompt: str | None = None,
        seed: float | None = None,
        videos_per_prompt: float | None = None,
        *params: Any,
    ) -> tuple[str, dict[str, Any], list[str]]:
        """Generate the video(s) of one prompt: the first video, its metadata, and every MP4 for download.

        `params` are the text-to-video parameters' fields, in `PARAMS` order (then Gradio's progress tracker); an
        empty field is the model's default, and so is an empty model (the first offered), negative prompt or number
        of videos (one). The pipeline validates every value; only the prompt is checked first, so that an empty one
        never waits for a model to load."""
        values = _values(PARAMS, params)
        with _shown_as_message():
            raise_problems(request_problems(prompt=prompt))
            pipeline = self.loaded.get(model or self.models[0])
            videos = pipeline.generate(
                prompt,
                videos_per_prompt=1 if videos_per_prompt is None else int(videos_per_prompt),
                **_request(negative_prompt, seed),
                **values,
            )
        prefix = self._output_prefix()
        paths = [str(v.save(f"{prefix}-seed{v.metadata['seed']}.mp4")) for v in videos]
        return paths[0], videos[0].metadata, paths

    def _output_prefix(self) -> str:
        """Where this request's videos go: `OUT/ui/`, named by the time of the request."""
        folder = self.out_dir / "ui"
        folder.mkdir(parents=True, exist_ok=True)
        return str(folder / time.strftime("%Y%m%d-%H%M%S"))

    def guided(
        self,
        video: str | None,
        prompt: str,
        model: str | None = None,
        controlnet: str | None = None,
        *params: Any,
    ) -> tuple[str, str | None, dict[str, Any]]:
        """A guided video following the control `video`: the video, its control maps (as an MP4) and its metadata.

        `params` are guided video's own fields (`GUIDED_PARAMS` order), then steps, seed, negative prompt and depth
        model (then Gradio's progress tracker); each empty one is the model's default. An empty model is the first
        the tab offers, an empty ControlNet (or depth model) the one that fits a preset model."""
        *guided, steps, seed, negative_prompt, depth_model = _values((*GUIDED_PARAMS, STEPS), params, extra=3)
        with _shown_as_message():
            _check_video_request("control", video, prompt)
            model = model or self.guided_models[0]
            controlnet = controlnet or CONTROLNET_OF_PRESET.get(model)
            if not controlnet:
                raise UserError(f"choose the ControlNet to run with {model!r} (a folder or a hub id)")
            pipeline = self.loaded.get(model, controlnet, self.depth_model_for(model, depth_model))
            names = [info.name for info in GUIDED_PARAMS]
            videos = pipeline.generate(
                prompt,
                control=video,
                steps=steps,
                **_request(negative_prompt, seed),
                **dict(zip(names, guided, strict=True)),
            )
        result = videos[0]
        path = result.save(f"{self._output_prefix()}-guided-seed{result.metadata['seed']}.mp4", save_control=True)
        control = path.with_suffix(".control.mp4")
        return str(path), str(control) if control.is_file() else None, result.metadata

    def edit(
        self, video: str | None, prompt: str, model: str | None = None, *params: Any
    ) -> tuple[str, dict[str, Any]]:
        """The input `video` edited by the instruction `prompt`: the edited video and its metadata.

        `params` are video editing's fields (`EDIT_PARAMS` order), then seed and negative prompt (then Gradio's
        progress tracker); each empty one is the model's default. An empty model is the first the tab offers."""
        *edit, seed, negative_prompt = _values(EDIT_PARAMS, params, extra=2)
        with _shown_as_message():
            _check_video_request("video", video, prompt)
            pipeline = self.loaded.get(model or self.edit_models[0])
            names = [info.name for info in EDIT_PARAMS]
            videos = pipeline.generate(
                prompt, video=video, **_request(negative_prompt, seed), **dict(zip(names, edit, strict=True))
            )
        result = videos[0]
        path = result.save(f"{self._output_prefix()}-edit-seed{result.metadata['seed']}.mp4")
        return str(path), result.metadata

    def depth_model_for(self, model: str, depth_model: str | None) -> str | None:
        """The depth annotator's model: the one given, the random one fitting a preset, or the pipeline's default."""
        return depth_model or DEPTH_MODEL_OF_PRESET.get(model)

    def preview_control(
        self,
        video: str | None,
        model: str | None = None,
        annotator: str | None = None,
        canny_low: float | None = None,
        canny_high: float | None = None,
        start: float | None = None,
        end: float | None = None,
        depth_model: str | None = None,
    ) -> list[Any]:
        """A few of the control video's control maps, evenly over the cut, at the size the model would run them."""
        import numpy as np

        from t2v_fast.annotators import annotate
        from t2v_fast.core.video_input import load_video, probe_video

        with _shown_as_message():
            video = _check_video_request("control", video)
            model = model or self.guided_models[0]
            try:
                resolution = describe_model(model).native_size
            except T2vFastError:
                resolution = 512  # Stable Diffusion 1.x's; Run says what is wrong with the model
            first = start or 0.0
            facts = probe_video(video)
            span = (end if end is not None else facts.duration or 0.0) - first
            fps = min(facts.fps, PREVIEW_FRAMES / span) if span > 0 else None
            frames = load_video(video, start=first, end=end, fps=fps, resolution=resolution).frames
            chosen = np.unique(np.linspace(0, len(frames) - 1, min(PREVIEW_FRAMES, len(frames))).round().astype(int))
            defaults = {info.name: info.default for info in GUIDED_PARAMS}
            maps = annotate(
                frames[chosen],
                annotator or defaults["annotator"],
                canny_low=defaults["canny_low"] if canny_low is None else int(canny_low),
                canny_high=defaults["canny_high"] if canny_high is None else int(canny_high),
                depth_model=self.depth_model_for(model, depth_model) or _default_depth_model(),
                device=self.loaded.device,
            )
        return [(frame, f"frame {index}") for frame, index in zip(maps, chosen, strict=True)]

    def guided_defaults(self, model: str) -> tuple[Any, Any]:
        """The ControlNet and depth model fields for a model: those fitting a preset, unchanged otherwise."""
        if model in CONTROLNET_OF_PRESET:
            return CONTROLNET_OF_PRESET[model], DEPTH_MODEL_OF_PRESET[model]
        return gr.update(), gr.update()

    def page_defaults(self, model: str, guided_model: str) -> list[Any]:
        """What a page opens with: the chosen models' defaults in their fields (empty in the endpoints, whose empty
        inputs are the chosen model's default), and the fields that start empty emptied (the browser shows an empty
        number field as 0 until it is set)."""
        return [*self.family_defaults(model), *self.guided_defaults(guided_model), *[None] * self.emptied]

    def family_defaults(self, model: str) -> list[Any]:
        """Each parameter field's value for the model's family: its default, or empty where the family has none or
        does not take the parameter (unchanged when the model cannot be described: Run says why)."""
        try:
            family = describe_model(model).family_record
        except T2vFastError:
            return [gr.update() for _ in PARAMS]
        taken = {info.name for info in param_infos(family.params)}
        return [family.defaults.get(i.name, i.default) if i.name in taken else None for i in PARAMS]

    def night_path(self, folder: str) -> Path:
        """A night's folder: a relative name is under the served folder (`--out`), which it may not leave."""
        served = self.out_dir.resolve()
        path = (served / Path(folder.strip()).expanduser()).resolve()
        if not path.is_relative_to(served):
            raise gr.Error(f"the app serves nights under {served} (its --out); {path} is not there")
        return path

    def latest_night(self) -> str:
        """The most recently written night under the served folder, as the name to type; empty when there is none."""
        nights = sorted(self.out_dir.glob("**/results.csv"), key=lambda p: p.stat().st_mtime)
        return str(nights[-1].parent.relative_to(self.out_dir)) if nights else ""

    def load_night(self, folder: str) -> tuple[str, list[list[Any]], list[list[Any]]]:
        """Counts per status (and QC), the rows, and the rejected rows of a night's output folder."""
        path = self.night_path(folder)
        results = path / "results.csv"
        if not results.is_file():
            raise gr.Error(f"{path} has no results.csv: choose a folder written by t2v-fast batch or nightly")
        rows = _read_csv(results)
        statuses = ("done", "skipped", "failed", "rejected")
        counts = {status: sum(r["status"] == status for r in rows) for status in statuses}
        flagged = sum(r.get("qc", "") not in ("", "ok") for r in rows)
        summary = " · ".join(f"**{n}** {status}" for status, n in counts.items()) + f" · **{flagged}** flagged by QC"
        rejected = _read_csv(path / "rejected.csv") if (path / "rejected.csv").is_file() else []
        table = [[r.get(c, "") for c in ROW_COLUMNS] for r in rows]
        return summary, table, [[r["row"], r["column"], r["problem"]] for r in rejected]

    def filter_rows(self, folder: str, status: str, text: str) -> list[list[Any]]:
        _, table, _ = self.load_night(folder)
        wanted = [r for r in table if status in ("all", r[2]) and text.lower() in " ".join(map(str, r)).lower()]
        return wanted

    def show_row(self, folder: str, table: Any, event: gr.SelectData) -> tuple[str | None, dict[str, Any]]:
        """The clicked row's video and its sidecar (prompt and parameters)."""
        values = table.values.tolist()[event.index[0]] if hasattr(table, "values") else table[event.index[0]]
        row_id = str(values[0])
        videos = sorted(self.night_path(folder).glob(f"{row_id}*.mp4"))
        videos = [v for v in videos if v.stem == row_id or v.stem.rsplit("-", 1)[0] == row_id]
        if not videos:
            return None, {"id": row_id, "status": values[2], "reason": values[3]}
        return str(videos[0]), json.loads(videos[0].with_suffix(".json").read_text())

    def build(self) -> gr.Blocks:
        with gr.Blocks(title="t2v-fast") as demo:
            gr.Markdown(
                "# t2v-fast\nText to video (Text2Video-Zero and ModelScope models), guided video, video editing"
                " (Instruct-Pix2Pix), and a review room for each night's output."
            )
            with gr.Tab("Generate"):
                with gr.Row():
                    with gr.Column():
                        prompt = gr.Textbox(label="Prompt", placeholder="a panda playing guitar on times square")
                        model = gr.Dropdown(self.models, value=self.models[0], label="Model", allow_custom_value=True)
                        run = gr.Button("Run", variant="primary")
                        with gr.Accordion("Advanced options", open=False):
                            negative = gr.Textbox(label="Negative prompt")
                            seed = gr.Number(None, label="Seed (empty: random)", precision=0)
                            videos = gr.Number(1, label="Videos per prompt", precision=0)
                            # Empty until the page opens (`page_defaults`): an input's initial value is its
                            # default in the API, where an empty field is whichever model's default.
                            fields = [_field(info, None) for info in PARAMS]
                    with gr.Column():
                        video = gr.Video(label="Video", autoplay=True, elem_id="result-video")
                        metadata = gr.JSON(label="Sidecar metadata")
                        files = gr.File(label="Download", file_count="multiple")
                inputs = [prompt, model, negative, seed, videos, *fields]
                names = ["prompt", "model", "negative_prompt", "seed", "videos_per_prompt", *(i.name for i in PARAMS)]
                run.click(_named(self.generate, names), inputs, [video, metadata, files], api_name="generate")
                # gradio documents api_name=False (no API endpoint) but types it `str | None`.
                model.change(self.family_defaults, model, fields, api_name=False)  # type: ignore[arg-type]
            with gr.Tab("Guided by a video"):
                guided_model, controlnet, depth, guided_empty = self.build_guided()
            with gr.Tab("Edit a video"):
                edit_empty = self.build_edit()
            with gr.Tab("Night"):
                with gr.Row():
                    folder = gr.Textbox(
                        self.latest_night(),
                        label="Night folder, under the app's --out",
                        placeholder=f"NAME, for t2v-fast batch ... --out {self.out_dir / 'NAME'}",
                        scale=4,
                    )
                    load = gr.Button("Load", scale=1)
                counts = gr.Markdown()
                with gr.Row():
                    status = gr.Dropdown(["all", "done", "skipped", "failed", "rejected"], value="all", label="Status")
                    text = gr.Textbox(label="Filter (id, reason, QC)")
                with gr.Row():
                    table = gr.Dataframe(headers=ROW_COLUMNS, interactive=False, label="Rows", scale=3)
                    with gr.Column(scale=2):
                        row_video = gr.Video(label="Row video", autoplay=True, elem_id="row-video")
                        row_meta = gr.JSON(label="Prompt and parameters")
                rejected = gr.Dataframe(headers=["row", "column", "problem"], interactive=False, label="Rejected rows")
                load.click(self.load_night, folder, [counts, table, rejected], api_name="night")
                for trigger in (status.change, text.submit):
                    trigger(self.filter_rows, [folder, status, text], table, api_name=False)  # type: ignore[arg-type]
                table.select(self.show_row, [folder, table], [row_video, row_meta], api_name=False)  # type: ignore[arg-type]
            empty = [seed, *guided_empty, *edit_empty]
            self.emptied = len(empty)
            opened, filled = [model, guided_model], [*fields, controlnet, depth, *empty]
            demo.load(self.page_defaults, opened, filled, api_name=False, concurrency_limit=None)
        return demo

    def build_guided(self) -> tuple[gr.Dropdown, gr.Dropdown, gr.Textbox, list[gr.Number]]:
        """The guided tab: a control video and its previewed control maps, a prompt, a model and its ControlNet, and
        guided video's parameters; Run is the `/guided` endpoint. The model, ControlNet and depth model fields, which
        the page fills when it opens, and the number fields it empties then."""
        gr.Markdown(
            "Text2Video-Zero with a ControlNet: the motion and layout follow the uploaded video's control maps"
            " (edges, depth, or the video itself), the look follows the prompt."
        )
        by_name = {info.name: info for info in GUIDED_PARAMS}
        with gr.Row():
            with gr.Column():
                control = gr.Video(label="Control video", sources=["upload"], elem_id="control-video")
                annotator = _field(by_name["annotator"], by_name["annotator"].default)
                preview = gr.Button("Preview control maps", elem_id="preview-control")
                prompt = gr.Textbox(
                    label="Prompt (guided video)", placeholder="an oil painting of a dancer", elem_id="guided-prompt"
                )
                model = gr.Dropdown(
                    self.guided_models, value=self.guided_models[0], label="Base model", allow_custom_value=True
                )
                controlnet = gr.Dropdown(
                    list(CONTROLNET_PRESETS),
                    value=None,
                    label="ControlNet",
                    allow_custom_value=True,
                    info="a preset, a ControlNetModel folder or a hub id; empty: the one fitting a preset model",
                )
                run = gr.Button("Run guided video", variant="primary", elem_id="guided-run")
                with gr.Accordion("Guided video options", open=False):
                    fields = {
                        info.name: _field(info, info.default) for info in GUIDED_PARAMS if info.name != "annotator"
                    }
                    steps = _field(
                        STEPS,
                        None,
                        label=f"{STEPS.label} ({GUIDED.title})",
                        default=f"{GUIDED.title}'s {GUIDED.defaults['steps']}",
                    )
                    seed, negative = _seed_and_negative(GUIDED.title)
                    depth = gr.Textbox(
                        label="Depth model (depth annotator)",
                        info="a preset (dpt-tiny-random, dpt-hybrid-random), a folder or a hub id; empty: the one"
                        " fitting a preset model, else Intel/dpt-hybrid-midas",
                    )
            with gr.Column():
                maps = gr.Gallery(label="Control maps", columns=4, height="auto", elem_id="control-maps")
                output = gr.Video(label="Guided video", autoplay=True, elem_id="guided-video")
                followed = gr.Video(label="Control maps followed", elem_id="guided-control")
                metadata = gr.JSON(label="Sidecar metadata (guided video)")
        params = [annotator if info.name == "annotator" else fields[info.name] for info in GUIDED_PARAMS]
        inputs = [control, prompt, model, controlnet, *params, steps, seed, negative, depth]
        names = ["video", "prompt", "model", "controlnet", *by_name, "steps", "seed", "negative_prompt", "depth_model"]
        run.click(_named(self.guided, names, required=2), inputs, [output, followed, metadata], api_name="guided")
        shown = [control, model, annotator, fields["canny_low"], fields["canny_high"], fields["start"], fields["end"]]
        preview.click(self.preview_control, [*shown, depth], maps, api_name="preview_control")
        model.change(self.guided_defaults, model, [controlnet, depth], api_name=False)  # type: ignore[arg-type]
        return model, controlnet, depth, _emptied([*params, steps, seed])

    def build_edit(self) -> list[gr.Number]:
        """The edit tab: an input video, an instruction, an Instruct-Pix2Pix model and video editing's parameters;
        Run is the `/edit` endpoint. The number fields the page empties when it opens."""
        gr.Markdown(
            'Instruct-Pix2Pix with cross-frame attention: the uploaded video, edited by an instruction ("make it'
            ' winter", "in Van Gogh style"), frame-to-frame consistent.'
        )
        with gr.Row():
            with gr.Column():
                source = gr.Video(label="Input video", sources=["upload"], elem_id="edit-source")
                prompt = gr.Textbox(label="Instruction", placeholder="make it winter", elem_id="edit-prompt")
                model = gr.Dropdown(
                    self.edit_models, value=self.edit_models[0], label="Model (video editing)", allow_custom_value=True
                )
                run = gr.Button("Run video editing", variant="primary", elem_id="edit-run")
                with gr.Accordion("Video editing options", open=False):
                    fields = [self._edit_field(info) for info in EDIT_PARAMS]
                    seed, negative = _seed_and_negative(EDIT.title)
            with gr.Column():
                output = gr.Video(label="Edited video", autoplay=True, elem_id="edit-video")
                metadata = gr.JSON(label="Sidecar metadata (video editing)")
        inputs = [source, prompt, model, *fields, seed, negative]
        names = ["video", "prompt", "model", *(info.name for info in EDIT_PARAMS), "seed", "negative_prompt"]
        run.click(_named(self.edit, names, required=2), inputs, [output, metadata], api_name="edit")
        return _emptied([*fields, seed])

    @staticmethod
    def _edit_field(info: ParamInfo) -> gr.Number | gr.Dropdown:
        """A video editing field, labelled apart from the other tabs': the cut as the guided tab has it, the others
        empty, saying Instruct-Pix2Pix's default (the family's, else the parameter's)."""
        label = f"{info.label} ({EDIT.title})"
        if info.section == INPUT_VIDEO:
            return _field(info, info.default, label=label)
        default = INSTRUCT_PIX2PIX.defaults.get(info.name, info.default)
        return _field(info, None, label=label, default=f"{INSTRUCT_PIX2PIX.title}'s {default:g}")


def _field(
    info: ParamInfo, value: Any, label: str | None = None, default: str | None = None
) -> gr.Number | gr.Dropdown:
    """A parameter's field, from its metadata: a number, or a choice for a text parameter; empty means the model's
    default (`default` says which, where the metadata's words do not fit)."""
    owner = f"{info.owner}: " if info.owner else ""
    if default is None:
        by_family = defaults_by_family(info.name)
        words = f"set to the model's default when the model changes ({by_family})" if info.family_default else by_family
        default = info.default_text(words)
        if not info.family_default:
            default = f"empty: {default}" if info.default is None else f"default {default}"
    else:
        default = f"empty: {default}"
    text = f"{owner}{info.help}; {default}"
    if info.kind is str:
        return gr.Dropdown(list(info.choices), value=value, label=label or info.label, info=text)
    return gr.Number(value, label=label or info.label, precision=0 if info.kind is int else None, info=text)


def _seed_and_negative(what: str) -> tuple[gr.Number, gr.Textbox]:
    """The seed and negative prompt fields of a tab running `what` (guided video, video editing), labelled apart from
    the other tabs'."""
    seed = gr.Number(None, label=f"Seed ({what}; empty: random)", precision=0)
    return seed, gr.Textbox(label=f"Negative prompt ({what})")


def _emptied(fields: Sequence[Any]) -> list[gr.Number]:
    """The number fields that start empty: the page empties them when it opens (the browser shows them as 0)."""
    return [f for f in fields if isinstance(f, gr.Number) and f.value is None]


@contextlib.contextmanager
def _shown_as_message() -> Iterator[None]:
    """Bad input as one message in the page (and the API's error), never a stack trace."""
    try:
        yield
    except T2vFastError as error:
        raise gr.Error(str(error), print_exception=False) from None


UPLOAD_PURPOSES = {"control": "follow", "video": "edit"}  # what each task's input video is for, in messages


def _check_video_request(name: str, video: str | None, prompt: str | None = None) -> str:
    """The checks a request with an input video (`name`, as `Task.input_videos` names it) passes before any model
    loads: the video is there (returned), and so is the prompt (when it takes one)."""
    if not video:
        raise UserError(f"missing {INPUT_TITLES[name]}: upload the video to {UPLOAD_PURPOSES[name]}")
    if prompt is not None:
        raise_problems(request_problems(prompt=prompt))
    return video


def _request(negative_prompt: str | None, seed: float | None) -> dict[str, Any]:
    """What every tab's request passes alike: an empty negative prompt is none, an empty seed random, and the
    progress bar follows the denoising steps."""
    return {"negative_prompt": negative_prompt or None, "seed": _typed_int(seed), "progress": True}


def _named(fn: Callable[..., Any], names: Sequence[str], required: int = 1) -> Callable[..., Any]:
    """`fn` as Gradio should see it: one parameter per input, named (the API's keyword arguments), each after the
    `required` first optional (None: the model's default), then the progress tracker Gradio fills in."""

    def call(*values: Any) -> Any:
        return fn(*values[:-1])  # the tracker reports tqdm's bars by itself

    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    parameters = [inspect.Parameter(name, positional) for name in names[:required]]
    parameters += [inspect.Parameter(name, positional, default=None) for name in names[required:]]
    parameters.append(inspect.Parameter("progress", positional, default=gr.Progress(track_tqdm=True)))
    call.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    call.__name__ = call.__qualname__ = fn.__name__
    call.__doc__ = fn.__doc__
    return call


def _values(infos: Sequence[ParamInfo], fields: Sequence[Any], extra: int = 0) -> Any:
    """The fields' values as the pipeline takes them, by name (then `extra` fields as they are)."""
    if len(fields) != len(infos) + extra:
        raise gr.Error(f"expected {len(infos) + extra} parameter values, got {len(fields)}", print_exception=False)
    values = [_typed(info, value) for info, value in zip(infos, fields, strict=False)]
    if extra:
        return [*values, *fields[len(infos) :]]
    return {info.name: value for info, value in zip(infos, values, strict=True)}


def _default_depth_model() -> str:
    from t2v_fast.annotators import DEFAULT_DEPTH_MODEL

    return DEFAULT_DEPTH_MODEL


def _typed(info: ParamInfo, value: Any) -> Any:
    if info.kind is str:
        return value or None
    return _typed_int(value) if info.kind is int else value


def _typed_int(value: float | None) -> int | None:
    return None if value is None else int(value)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def serve(
    models: list[str],
    backend: str = "torch",
    device: str | None = None,
    dtype: str | None = None,
    models_dir: Path | None = None,
    out_dir: Path = Path("outputs"),
    host: str = "127.0.0.1",
    port: int = 7860,
    block: bool = True,
) -> gr.Blocks:
    """Start the app on `host:port` (loopback by default); a taken port is a `UserError` saying so."""
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            raise UserError(f"cannot listen on {host}:{port} ({error.strerror}); choose another --port") from None
    app = App(model_choices(models, models_dir), LoadedModel(backend, device, dtype), out_dir)
    demo = app.build()
    demo.queue(default_concurrency_limit=1, max_size=QUEUE_SIZE)
    demo.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=not block,
        allowed_paths=[str(out_dir.resolve())],
        show_error=True,
        quiet=True,
    )
    return demo
