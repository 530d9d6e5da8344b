"""CSV prompt manifests: parse, validate every row, and reject only the rows that are wrong.

Format: UTF-8 (a BOM and CRLF line ends are fine), RFC 4180 quoting (fields may hold commas and newlines), a header
row. `prompt` is required; `id` is optional; the request's own columns (`REQUEST_COLUMNS`) and every generation
parameter (`t2v_fast.core.families.all_params`, one column each, by name) may override the run's defaults per row.
A row with a `control` video (a path, relative to the manifest's folder or absolute) is a guided video; plain and
guided rows mix in one manifest, and the run's defaults apply to each row's parameters that its task takes.
Row numbers count records as a spreadsheet does: the header is row 1, the first prompt row 2.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from t2v_fast.annotators import DEFAULT_DEPTH_MODEL
from t2v_fast.core.families import (
    GUIDED,
    TASKS,
    TEXT_TO_VIDEO,
    all_params,
    family_named,
    settings_of,
    task_named,
    task_of_inputs,
)
from t2v_fast.core.input_params import INPUT_TITLES, probe_input
from t2v_fast.core.params import CommonParams, ParamProblem, ParamRequest, raise_problems, request_problems
from t2v_fast.core.video_input import content_sha256
from t2v_fast.errors import UserError

if TYPE_CHECKING:
    from t2v_fast.core.input_params import InputVideoParams
    from t2v_fast.core.models import ModelCard

# Column -> type of every typed column: the request's own, and each generation parameter's, from its metadata.
TYPED_COLUMNS: dict[str, type] = {
    "seed": int,
    "videos_per_prompt": int,
    **{info.name: info.kind for info in all_params()},
}
REQUEST_COLUMNS = ("negative_prompt", "seed", "videos_per_prompt")
# Input video columns, one per task input (`Task.input_videos`).
INPUT_COLUMNS = tuple(dict.fromkeys(name for task in TASKS.values() for name in task.input_videos))
COLUMNS = (
    "id",
    "prompt",
    "negative_prompt",
    *INPUT_COLUMNS,
    *(info.name for info in all_params()),
    "seed",
    "videos_per_prompt",
)
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
CLIP_TOKENS = 77


@dataclass(frozen=True)
class Problem:
    row: int
    column: str
    message: str

    def __str__(self) -> str:
        return f"row {self.row}, column {self.column}: {self.message}"


@dataclass(frozen=True)
class ManifestRow:
    """A valid row: its id, prompt, and the settings it asks for, resolved for the model (defaults applied)."""

    row: int
    id: str
    prompt: str
    negative_prompt: str
    seed: int
    videos_per_prompt: int
    settings: CommonParams
    family: str  # whose settings they are (`Family.params`), so that a row read back from JSON is typed again
    task: str = TEXT_TO_VIDEO.name  # ... with its task's (`Task.params`)
    # Input videos by column (absolute paths) and their content hashes, part of the request.
    inputs: dict[str, str] = field(default_factory=dict)
    input_sha256: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> ManifestRow:
        task = task_named(entry.get("task", TEXT_TO_VIDEO.name))
        settings = settings_of(family_named(entry["family"]), task)[0](**entry["settings"])
        return cls(**{**entry, "settings": settings})


@dataclass
class Manifest:
    rows: list[ManifestRow]
    rejected: dict[int, list[Problem]]  # row number -> its problems
    rejected_ids: dict[int, str] = field(default_factory=dict)  # row number -> its id, where it has one
    warnings: list[Problem] = field(default_factory=list)
    total_rows: int = 0

    @property
    def problems(self) -> list[Problem]:
        return [p for row in sorted(self.rejected) for p in self.rejected[row]]


def stable_id(values: dict[str, str]) -> str:
    """An id from the row's content, so that a re-run maps the same row to the same output file."""
    canonical = json.dumps({k: v.strip() for k, v in sorted(values.items()) if v.strip()}, sort_keys=True)
    return "row-" + hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _convert(column: str, text: str) -> int | float | str:
    kind = TYPED_COLUMNS[column]
    if kind is str:
        return text.strip()  # a choice (`ParamInfo.choices`), checked with the other rules
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


def read_records(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header (lower-cased names) and data records of a CSV file; a file-level problem is a UserError."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"manifest {path} not found") from None
    except UnicodeDecodeError as error:
        raise UserError(f"manifest {path} is not UTF-8 (byte {error.start}); save it as UTF-8 CSV") from None
    reader = csv.reader(text.splitlines(keepends=True), strict=True)
    try:
        records = list(reader)
    except csv.Error as error:
        raise UserError(f"manifest {path} is not valid CSV at row {reader.line_num}: {error}") from None
    records = [r for r in records if any(cell.strip() for cell in r)]
    if not records:
        raise UserError(f"manifest {path} is empty: it needs a header row with a 'prompt' column and prompt rows")
    header = [name.strip().lower() for name in records[0]]
    if "prompt" not in header:
        raise UserError(f"manifest {path} has no 'prompt' column (header: {', '.join(header)})")
    if len(records) == 1:
        raise UserError(f"manifest {path} has a header but no prompt rows")
    return header, records[1:]


def parse_manifest(
    path: str | Path, defaults: ParamRequest, model: ModelCard, base_seed: int = 0, depth_model: str | None = None
) -> Manifest:
    """Validate every row against the run's defaults and `model`; collect every problem with its row and column.
    `depth_model` is the run's depth annotator (part of a depth row's request)."""
    path = Path(path)
    raise_problems(_defaults_problems(defaults, model), where=f"invalid defaults for {path}: ")
    header, records = read_records(path)
    unknown = [name for name in header if name not in COLUMNS]
    manifest = Manifest(rows=[], rejected={}, total_rows=len(records))
    first_row_of: dict[str, int] = {}
    for number, record in enumerate(records, start=2):
        values = dict(zip(header, record, strict=False))
        problems = [
            Problem(number, name, f"unknown column (known: {', '.join(COLUMNS)})")
            for name in unknown
            if values.get(name, "").strip()
        ]
        if len(record) > len(header):
            extra = ",".join(record[len(header) :])
            problems.append(Problem(number, f"#{len(header) + 1}", f"more fields than the header has: {extra!r}"))
        prompt = values.get("prompt", "").strip()
        negative = values.get("negative_prompt", "").strip()
        settings: dict[str, Any] = {}
        for column in TYPED_COLUMNS:
            text = values.get(column, "").strip()
            if text:
                try:
                    settings[column] = _convert(column, text)
                except ValueError as error:
                    problems.append(Problem(number, column, str(error)))
        request: dict[str, Any] = {k: settings.pop(k) for k in ("seed", "videos_per_prompt") if k in settings}
        problems += _blame(number, request_problems(prompt=prompt, negative_prompt=negative, **request), request)
        row_id = values.get("id", "").strip() or stable_id({k: v for k, v in values.items() if k in COLUMNS})
        if values.get("id", "").strip() and not ID_PATTERN.fullmatch(row_id):
            problems.append(
                Problem(number, "id", f"{row_id!r} is not a valid id (letters, digits, . _ -; 128 at most)")
            )
        elif row_id in first_row_of:
            problems.append(Problem(number, "id", f"duplicate id {row_id!r} (first at row {first_row_of[row_id]})"))
        inputs, input_problems = _input_videos(number, values, path.parent)
        problems += input_problems
        try:
            task = task_of_inputs(inputs)
        except UserError as error:  # a control video and a video to edit: two tasks' inputs
            problems.append(Problem(number, next(iter(inputs)), str(error)))
            task = TEXT_TO_VIDEO  # the row is rejected; its parameters are still checked
        if task.name not in model.tasks and task.families and model.family in task.families:
            problems.append(Problem(number, task.input_videos[0], f"{task.title} needs a ControlNet for the run"))
        resolved, param_problems = model.check(
            ParamRequest(settings).merged(_defaults_for(defaults, model, task)), task
        )
        problems += _blame(number, param_problems, {**settings, **inputs})
        hashes = {}
        if not problems and resolved is not None:
            try:
                for column, video in inputs.items():
                    probe_input(video, cast("InputVideoParams", resolved), INPUT_TITLES[column])
                    hashes[column] = content_sha256(video)
                if task is GUIDED:  # another ControlNet (or depth model) makes another video of the same request
                    hashes["controlnet"] = model.controlnet
                if task is GUIDED and getattr(resolved, "annotator", None) == "depth":
                    hashes["depth_model"] = depth_model or DEFAULT_DEPTH_MODEL
            except UserError as error:
                problems.append(Problem(number, next(iter(inputs)), str(error)))
        if problems or resolved is None:
            manifest.rejected[number] = sorted(problems, key=lambda p: _COLUMN_ORDER.get(p.column, -1))
            manifest.rejected_ids[number] = values.get("id", "").strip()
            continue
        first_row_of[row_id] = number
        if len(model.tokenizer(prompt).input_ids) > CLIP_TOKENS:
            manifest.warnings.append(Problem(number, "prompt", f"longer than {CLIP_TOKENS} CLIP tokens; truncated"))
        seed = request.get("seed", base_seed + number - 2)
        videos = request.get("videos_per_prompt", 1)
        row = ManifestRow(number, row_id, prompt, negative, seed, videos, resolved, model.family, task.name)
        manifest.rows.append(replace(row, inputs=inputs, input_sha256=hashes))
    return manifest


def _input_videos(number: int, values: dict[str, str], folder: Path) -> tuple[dict[str, str], list[Problem]]:
    """The row's input videos as absolute paths (relative ones are the manifest folder's); a missing one is a
    problem of its column."""
    inputs, problems = {}, []
    for column in INPUT_COLUMNS:
        text = values.get(column, "").strip()
        if not text:
            continue
        video = Path(text).expanduser()
        video = video if video.is_absolute() else folder / video
        if not video.exists():
            problems.append(Problem(number, column, f"{text!r} does not exist (relative paths are the manifest's)"))
        inputs[column] = str(video.resolve())
    return inputs, problems


def _task_params(model: ModelCard, task: Any) -> set[str]:
    return {info.name for info in settings_of(model.family_record, task)[0].infos()}


def _defaults_for(defaults: ParamRequest, model: ModelCard, task: Any) -> ParamRequest:
    """The run's defaults that a row of `task` takes: a guided parameter's default is not a plain row's, and fast
    mode's is not a guided row's (guided video refuses it)."""
    taken = _task_params(model, task)
    return ParamRequest(
        {
            name: value
            for name, value in defaults.values.items()
            if name in taken and not model.check(ParamRequest({name: value}), task)[1]
        }
    )


def _defaults_problems(defaults: ParamRequest, model: ModelCard) -> list[ParamProblem]:
    """The run's defaults: each must be taken by some task the model runs, and those a task takes must agree."""
    tasks = [task_named(name) for name in model.tasks]
    problems = [p for task in tasks for p in model.check(_defaults_for(defaults, model, task), task)[1]]
    for name, value in defaults.values.items():
        verdicts = [model.check(ParamRequest({name: value}), task)[1] for task in tasks]
        if all(verdicts):
            problems += verdicts[0]
    return problems


# Problems of a row are listed in this order of columns (then unknown columns and extra fields first).
_COLUMN_ORDER = {name: order for order, name in enumerate(COLUMNS)}


def _blame(number: int, problems: list[ParamProblem], given: dict[str, Any]) -> list[Problem]:
    """Each problem under the first of its columns that the row set (defaults were checked before)."""
    return [Problem(number, next((f for f in p.fields if f in given), p.fields[0]), p.message) for p in problems]
