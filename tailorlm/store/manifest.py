"""The manifest: what a stored model is, where it came from, and the digest of every file."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator

MANIFEST_FILE = "manifest.json"


class FileDigest(BaseModel):
    """The sha256 and byte size of one stored file."""

    sha256: str
    size: int


class StoredManifest(BaseModel):
    """What every stored manifest (model or adapter) shares: a `files` digest map, written last."""

    @field_validator("files", check_fields=False)
    @classmethod
    def _relative_paths_only(cls, files: dict[str, FileDigest]) -> dict[str, FileDigest]:
        # A tampered manifest must not make `verify` read outside the model folder.
        for rel in files:
            parts = PurePosixPath(rel).parts
            if not parts or rel.startswith("/") or "\\" in rel or ".." in parts or ":" in parts[0]:
                raise ValueError(f"file path {rel!r} in manifest is not a plain relative path")
        return files

    @property
    def size(self) -> int:
        """Total bytes of the stored files."""
        return sum(f.size for f in self.files.values())

    def write(self, folder: Path) -> Path:
        """Write `manifest.json` into `folder` and fsync it (the last write of an import)."""
        path = folder / MANIFEST_FILE
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(self.model_dump_json(indent=2))
            fh.flush()
            os.fsync(fh.fileno())
        return path

    @classmethod
    def read(cls, folder: Path) -> Self:
        """Load the manifest stored in `folder`."""
        return cls.model_validate_json((folder / MANIFEST_FILE).read_text(encoding="utf-8"))


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Manifest(StoredManifest):
    """Everything the store knows about one model; saved as `manifest.json`, written last."""

    model_config = ConfigDict(protected_namespaces=())

    schema_version: int = 1
    name: str
    source: str
    architecture: str
    model_type: str
    parameters: int
    context_length: int | None = None
    dtype: str | None = None
    license: str | None = None
    has_chat_template: bool = False
    format: Literal["safetensors", "gguf", "onnx"] = "safetensors"  # the weights' artifact; picks the backend
    quantization: str | None = None  # of an exported artifact (f16, q8_0, int8...)
    exported_from: str | None = None  # the model or adapter an exported artifact was made from
    created_at: str = Field(default_factory=now_iso)
    files: dict[str, FileDigest]
