"""The engine directory: ONNX files, optional TensorRT engines, tokenizer, scheduler and `engine.json`.

`engine.json` says what everything was built from, so that nothing stale is ever run: the source model and its weight
hash, each ONNX file's hash, its inputs/outputs with named dynamic axes, and each TensorRT engine's TensorRT version,
GPU compute capability and optimisation profile. Loading validates it and refuses anything that does not match.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .atomic import atomic_path
from .errors import UserError
from .models import ModelInfo

ENGINE_JSON = "engine.json"
FORMAT_VERSION = 1
COMPONENTS = ("text_encoder", "unet", "vae_decoder")


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
    """A validated engine directory. `manifest` is the parsed `engine.json`."""

    path: Path
    manifest: dict[str, Any]

    @classmethod
    def is_engine_dir(cls, path: str | Path) -> bool:
        return (Path(path) / ENGINE_JSON).is_file()

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
        missing = sorted({f.name for f in fields(ModelInfo)} - set(model_info))
        if missing:
            raise UserError(f"{where}: model_info lacks {', '.join(missing)} (an older export?); export again")
        _require(manifest, "export", dict, where)
        components = _require(manifest, "components", dict, where)
        for name in COMPONENTS:
            entry = _require(components, name, dict, f"{where} components")
            for key in ("file", "sha256"):
                _require(entry, key, str, f"{where} components.{name}")
            for key in ("inputs", "outputs"):
                _require(entry, key, list, f"{where} components.{name}")
        _require(manifest, "engines", dict, where)
        engine_dir = cls(path, manifest)
        if verify_hashes:
            for name in COMPONENTS:
                engine_dir.verify_onnx(name)
        return engine_dir

    def onnx_files(self, name: str) -> list[Path]:
        entry = self.manifest["components"][name]
        files = [self.path / entry["file"]]
        if entry.get("external_data"):
            files.append(self.path / entry["external_data"])
        return files

    def onnx_path(self, name: str) -> Path:
        return self.onnx_files(name)[0]

    def verify_onnx(self, name: str) -> None:
        files = self.onnx_files(name)
        for file in files:
            if not file.is_file():
                raise UserError(f"{file} is missing from the engine directory; export again")
        expected = self.manifest["components"][name]["sha256"]
        if file_sha256(*files) != expected:
            raise UserError(
                f"{files[0]} does not match the sha256 recorded in {self.path / ENGINE_JSON}: the file or the record"
                " was modified after export; export again"
            )

    def save(self) -> None:
        with atomic_path(self.path / ENGINE_JSON) as tmp:
            tmp.write_text(json.dumps(self.manifest, indent=2, sort_keys=True) + "\n")

    @property
    def model_info(self) -> dict[str, Any]:
        return self.manifest["model_info"]

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(**self.model_info)

    @property
    def source(self) -> dict[str, str]:
        return self.manifest["source"]
