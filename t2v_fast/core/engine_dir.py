"""The engine directory: ONNX files, optional TensorRT engines, tokenizer, scheduler and `engine.json`.

`engine.json` says what everything was built from, so that nothing stale is ever run: the source model and its weight
hash, each ONNX file's hash, its inputs/outputs with named dynamic axes, and each TensorRT engine's TensorRT version,
GPU compute capability and optimisation profile. Loading validates it and refuses anything that does not match; the
rest of t2v-fast reads it through the typed records below, never through string keys.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from t2v_fast.atomic import atomic_path
from t2v_fast.core.families import FAMILIES, TASKS, TEXT_TO_VIDEO
from t2v_fast.core.models import ModelCard
from t2v_fast.core.networks import FAST_NETWORKS, GUIDED_NETWORKS
from t2v_fast.errors import UserError

ENGINE_JSON = "engine.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ExportSettings:
    """Example shapes traced at export (the graph stays dynamic) and the exported precision."""

    frames: int | None = None  # None: the model family's default frame count
    height: int | None = None
    width: int | None = None
    videos: int = 1
    dtype: str = "fp32"
    opset: int = 18
    # "onnxruntime-cuda": graphs fused by ONNX Runtime's optimiser for its CUDA provider (contrib operators that only
    # that provider runs); None: plain ONNX for any runtime.
    optimized_for: str | None = None
    # Fast mode's graphs too (`unet_caching`, `unet_cached`, for `EXPORTED_BRANCH`): the first holds a copy of the
    # UNet's weights, the second those of its shallow branch.
    fast: bool = False


@dataclass(frozen=True)
class ComponentRecord:
    """One exported network: its ONNX file(s), their hash, and its inputs and outputs as exported."""

    file: str
    sha256: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    external_data: str | None = None
    bytes: int = 0
    export_seconds: float = 0.0
    axis_ranges: dict[str, list[int]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    fused_operators: dict[str, int] = field(default_factory=dict)  # with `optimized_for`: what the optimiser fused

    def input_dtype(self, name: str) -> str:
        return next(entry["dtype"] for entry in self.inputs if entry["name"] == name)


@dataclass(frozen=True)
class EngineRecord:
    """One TensorRT engine built from a component's ONNX file: what it was built from and for, and its profiles."""

    component: str
    file: str
    tensorrt_version: str
    compute_capability: str
    onnx_sha256: str
    weights_sha256: str
    profiles: list[dict[str, list[list[int]]]] = field(default_factory=list)  # per profile: input -> [min, opt, max]
    precision: str = "fp16"
    gpu: str = ""
    static: bool = False
    build_seconds: float = 0.0
    built_at: float = 0.0  # seconds since the epoch
    sha256: str = ""  # of the engine file
    bytes: int = 0


def _record(cls: type, entry: dict[str, Any]) -> Any:
    """A record from its JSON object; fields a later version added are ignored by an earlier one."""
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in entry.items() if k in known})


def file_sha256(*paths: Path) -> str:
    """Hash of one file, or of an ONNX file together with its external-data file."""
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as handle:
            while block := handle.read(1 << 24):
                digest.update(block)
    return digest.hexdigest()


def _require(mapping: Any, key: str, kind: type, where: str) -> Any:
    if not isinstance(mapping, dict) or key not in mapping:
        raise UserError(f"{where}: missing field {key!r}")
    if not isinstance(mapping[key], kind):
        raise UserError(f"{where}: field {key!r} must be {kind.__name__}, got {type(mapping[key]).__name__}")
    return mapping[key]


@dataclass
class EngineDir:
    """A validated engine directory. `manifest` is the parsed `engine.json`, read through the properties below."""

    path: Path
    manifest: dict[str, Any]

    @classmethod
    def is_engine_dir(cls, path: str | Path) -> bool:
        return (Path(path) / ENGINE_JSON).is_file()

    @classmethod
    def create(
        cls,
        path: Path,
        model_id: str,
        weights_sha256: str,
        card: ModelCard,
        settings: ExportSettings,
        components: dict[str, dict[str, Any]],
        **extra: Any,
    ) -> EngineDir:
        manifest = {
            "format_version": FORMAT_VERSION,
            "source": {"model_id": model_id, "weights_sha256": weights_sha256},
            "model_info": card.to_json(),
            "export": asdict(settings),
            "components": components,
            "engines": {},
            **extra,
        }
        return cls(path, manifest)

    @classmethod
    def load(cls, path: str | Path, verify_hashes: bool = True) -> EngineDir:
        """Parse and validate `engine.json`; with `verify_hashes`, also re-hash every ONNX file against it."""
        path = Path(path)
        manifest_path = path / ENGINE_JSON
        if not manifest_path.is_file():
            raise UserError(f"{manifest_path} not found: export a model there first (t2v-fast export MODEL --out DIR)")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise UserError(f"{manifest_path} is corrupt (not valid JSON: {error}); export again") from None
        where = str(manifest_path)
        version = _require(manifest, "format_version", int, where)
        if version != FORMAT_VERSION:
            raise UserError(
                f"{where}: format_version {version} is not supported (expected {FORMAT_VERSION}); export again"
            )
        source = _require(manifest, "source", dict, where)
        _require(source, "model_id", str, f"{where} source")
        _require(source, "weights_sha256", str, f"{where} source")
        model_info = _require(manifest, "model_info", dict, where)
        required = {f.name for f in fields(ModelCard) if f.default is MISSING}
        missing = sorted(required - set(model_info))
        if missing:
            raise UserError(f"{where}: model_info lacks {', '.join(missing)} (an older export?); export again")
        for key, known in (("family", FAMILIES), ("task", TASKS)):
            if model_info.get(key, TEXT_TO_VIDEO.name) not in known:
                raise UserError(
                    f"{where}: model_info {key} {model_info[key]!r} is not one this version runs"
                    f" ({', '.join(known)}); a later version exported it"
                )
        _require(manifest, "export", dict, where)
        components = _require(manifest, "components", dict, where)
        engine_dir = cls(path, manifest)
        for name in engine_dir.networks:
            entry = _require(components, name, dict, f"{where} components")
            for key in ("file", "sha256"):
                _require(entry, key, str, f"{where} components.{name}")
            for key in ("inputs", "outputs"):
                _require(entry, key, list, f"{where} components.{name}")
        _require(manifest, "engines", dict, where)
        if verify_hashes:
            for name in engine_dir.networks:
                engine_dir.verify_onnx(name)
        return engine_dir

    @property
    def model_id(self) -> str:
        """The model the graphs were exported from (a preset, folder or hub id)."""
        return self.manifest["source"]["model_id"]

    @property
    def weights_sha256(self) -> str:
        return self.manifest["source"]["weights_sha256"]

    @property
    def card(self) -> ModelCard:
        """The model card recorded at export (the scheduler and tokenizer are the folder's: `loading` attaches
        them)."""
        return ModelCard.from_json(self.manifest["model_info"])

    @property
    def export_settings(self) -> ExportSettings:
        return ExportSettings(**self.manifest["export"])

    @property
    def networks(self) -> tuple[str, ...]:
        """The networks exported here, each a component of `engine.json`: the model's task's (`Task.networks`), fast
        mode's two only with `--fast`, guided video's `unet_controlnet` only with `--controlnet` (the card then
        records the ControlNet)."""
        fast = FAST_NETWORKS if self.export_settings.fast else ()
        guided = GUIDED_NETWORKS if self.manifest["model_info"].get("controlnet") else ()
        return (*self.card.task_record.networks, *fast, *guided)

    def controlnet_for(self, controlnet: str | None) -> str | None:
        """The ControlNet a run of these graphs has when it asks for `controlnet` (None: whatever was exported): the
        exported one (None without one); asking an export without one for any, or one for another, is refused."""
        recorded = self.manifest["model_info"].get("controlnet", "")
        if controlnet is not None or recorded:
            self.check_guided(controlnet)
        return recorded or None

    def check_guided(self, controlnet: str | None = None) -> None:
        """Refuse a guided-video request these graphs cannot run: an export without a ControlNet, or one asking for
        another ControlNet than the one exported (the graphs hold its weights)."""
        recorded = self.manifest["model_info"].get("controlnet", "")
        if not recorded:
            raise UserError(
                f"{self.path} was exported without a ControlNet, so it cannot run guided video: export again with one"
                f" (t2v-fast export {self.model_id} --controlnet CONTROLNET --out DIR), or run it from the model"
                f" itself ({self.model_id} with --controlnet, torch backend)"
            )
        if controlnet is not None and controlnet != recorded:
            raise UserError(
                f"{self.path} was exported with ControlNet {recorded!r}, not {controlnet!r}: drop controlnet (the"
                f" engine directory brings its own), or export again with --controlnet {controlnet}"
            )

    def check_fast_mode(self, branch: int) -> None:
        """Refuse a fast-mode request that these graphs cannot run: an export without them, or another branch than
        the one they were built for (a branch's feature shape is fixed in the graphs)."""
        if not self.export_settings.fast:
            raise UserError(
                f"{self.path} was exported without fast mode's graphs; export again with --fast,"
                " or run fast mode on the torch backend"
            )
        exported = self.component("unet_caching").config["cache_branch"]
        if branch != exported:
            raise UserError(
                f"exported fast graphs are for cache_branch {exported}; cache_branch {branch} runs on the torch backend"
            )

    def check_runs_on(self, runtime: str) -> None:
        """Refuse a runtime that cannot run these graphs: an export optimised for one runtime holds operators only it
        runs (ONNX Runtime's CUDA contrib operators), so anything else needs a plain export."""
        target = self.export_settings.optimized_for
        if target is not None and runtime != target:
            raise UserError(
                f"{self.path} was exported for {target} (operators only it runs), not for {runtime}:"
                " export again without --optimize-for for this runtime"
            )

    def component(self, name: str) -> ComponentRecord:
        return _record(ComponentRecord, self.manifest["components"][name])

    def engines(self) -> dict[str, EngineRecord]:
        return {key: _record(EngineRecord, entry) for key, entry in self.manifest["engines"].items()}

    def record_engine(self, key: str, record: EngineRecord) -> None:
        """Add one engine to `engine.json`, merged under a lock with whatever other builders recorded meanwhile.

        Nodes sharing an engine folder may build into it at the same time; a plain read-modify-write would let the
        second writer drop the first one's entries."""
        with self._locked():
            current = json.loads((self.path / ENGINE_JSON).read_text())
            current["engines"][key] = asdict(record)
            self.manifest = current
            self.save()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with (self.path / f"{ENGINE_JSON}.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def onnx_files(self, name: str) -> list[Path]:
        record = self.component(name)
        files = [self.path / record.file]
        if record.external_data:
            files.append(self.path / record.external_data)
        return files

    def onnx_path(self, name: str) -> Path:
        return self.onnx_files(name)[0]

    def verify_onnx(self, name: str) -> None:
        files = self.onnx_files(name)
        for file in files:
            if not file.is_file():
                raise UserError(f"{file} is missing from the engine directory; export again")
        if file_sha256(*files) != self.component(name).sha256:
            raise UserError(
                f"{files[0]} does not match the sha256 recorded in {self.path / ENGINE_JSON}: the file or the record"
                " was modified after export; export again"
            )

    def save(self) -> None:
        with atomic_path(self.path / ENGINE_JSON) as tmp:
            tmp.write_text(json.dumps(self.manifest, indent=2, sort_keys=True) + "\n")
