"""`t2v-fast ui`: a Gradio web app to make a video from text, and a review room for a night's output.

Generate tab: a prompt, a model, and every generation parameter in a collapsed panel; a progress bar follows the
denoising steps; the result plays in the page with its sidecar and a download. One model stays loaded between
requests, and a queue runs one generation at a time (one GPU) with a bounded length. The same function is Gradio's
API endpoint `/generate`. Night tab: a folder written by `t2v-fast batch` or the nightly flow: counts per status, a
filterable table of rows (with their QC verdicts), rejected rows with row and column, and a click on a row plays its
video beside its prompt and parameters. Bad input shows as a message in the page, never a stack trace.
"""

from __future__ import annotations

import csv
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import gradio as gr

from t2v_fast.core.families import all_params, defaults_by_family
from t2v_fast.core.params import ParamInfo, param_infos, raise_problems, request_problems
from t2v_fast.core.presets import PRESETS
from t2v_fast.errors import T2vFastError, UserError
from t2v_fast.loading import describe_model, load_pipeline

# The generation parameters' fields, in this order in the form and in the `/generate` endpoint's arguments.
PARAMS = all_params()
ROW_COLUMNS = ["id", "row", "status", "reason", "seconds", "qc"]
QUEUE_SIZE = 16


class LoadedModel:
    """The one pipeline kept in memory: loading another model replaces it, since one GPU holds one model."""

    def __init__(self, backend: str, device: str | None, dtype: str | None):
        self.backend, self.device, self.dtype = backend, device, dtype
        self.source: str | None = None
        self.pipeline: Any = None
        self.lock = threading.Lock()

    def get(self, source: str) -> Any:
        with self.lock:
            if source != self.source:
                self.pipeline = load_pipeline(source, backend=self.backend, device=self.device, dtype=self.dtype)
                self.source = source
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


class App:
    def __init__(self, models: list[str], loaded: LoadedModel, out_dir: Path):
        self.models, self.loaded, self.out_dir = models, loaded, out_dir

    def generate(
        self,
        prompt: str,
        model: str,
        negative_prompt: str,
        seed: float | None,
        videos_per_prompt: float | None,
        progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008 (Gradio's way of asking for progress)
        *params: float | None,
    ) -> tuple[str, dict[str, Any], list[str]]:
        """Generate the video(s) of one prompt: the first video, its metadata, and every MP4 for download.

        `params` are the generation parameters' fields, in `all_params()` order; an empty field is the model's
        default. The pipeline validates every value; only the prompt is checked first, so that an empty one never
        waits for a model to load."""
        try:
            raise_problems(request_problems(prompt=prompt))
            pipeline = self.loaded.get(model)
            values = {info.name: _typed(info, value) for info, value in zip(PARAMS, params, strict=True)}
            videos = pipeline.generate(
                prompt,
                negative_prompt=negative_prompt or None,
                seed=_typed_int(seed),
                videos_per_prompt=1 if videos_per_prompt is None else int(videos_per_prompt),
                progress=True,
                **values,
            )
        except T2vFastError as error:
            raise gr.Error(str(error), print_exception=False) from None
        folder = self.out_dir / "ui"
        folder.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        paths = [str(v.save(folder / f"{stamp}-seed{v.metadata['seed']}.mp4")) for v in videos]
        return paths[0], videos[0].metadata, paths

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
                "# t2v-fast\nText to video (Text2Video-Zero and ModelScope models), and a review room for each"
                " night's output."
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
                            initial = self.family_defaults(self.models[0])
                            fields = [_field(info, value) for info, value in zip(PARAMS, initial, strict=True)]
                    with gr.Column():
                        video = gr.Video(label="Video", autoplay=True, elem_id="result-video")
                        metadata = gr.JSON(label="Sidecar metadata")
                        files = gr.File(label="Download", file_count="multiple")
                inputs = [prompt, model, negative, seed, videos, *fields]
                run.click(self.generate, inputs, [video, metadata, files], api_name="generate")
                # gradio documents api_name=False (no API endpoint) but types it `str | None`.
                model.change(self.family_defaults, model, fields, api_name=False)  # type: ignore[arg-type]
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
        return demo


def _field(info: ParamInfo, value: Any) -> gr.Number:
    """A parameter's field, from its metadata; empty means the model's default."""
    owner = f"{info.owner}: " if info.owner else ""
    default = info.default_text(f"set to the model's default when the model changes ({defaults_by_family(info.name)})")
    if not info.family_default:
        default = f"empty: {default}" if info.default is None else f"default {default}"
    return gr.Number(
        value, label=info.label, precision=0 if info.kind is int else None, info=f"{owner}{info.help}; {default}"
    )


def _typed(info: ParamInfo, value: float | None) -> int | float | None:
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
