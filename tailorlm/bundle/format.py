"""The bundle's layout: a tar whose first member, `bundle.json`, lists every other member with its sha256 and
size and says what to register on unpack. Every path a bundle names passes `check_member` before it is used."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tailorlm.errors import IntegrityError
from tailorlm.store.manifest import FileDigest, now_iso

FORMAT_VERSION = 1
SUFFIX = ".tailor"
BUNDLE_JSON = "bundle.json"
BUNDLE_SIG = "bundle.sig"
LICENSE = "LICENSE"
REPORTS = "reports"
MAX_JSON_BYTES = 64 * 1024 * 1024  # bundle.json is read into memory: a hostile size must not exhaust it
MAX_SIG_BYTES = 4096

ItemKind = Literal["model", "adapter", "knowledge_base", "preset"]
REGISTER_ORDER: tuple[ItemKind, ...] = ("model", "adapter", "knowledge_base", "preset")  # dependencies first


def check_member(path: str) -> str:
    """`path` if it is a plain relative posix path (no '..', no absolute or drive path, no '.' or empty parts)."""
    if not plain_path(path):
        raise IntegrityError(f"bundle member {path!r} is not a plain relative path; refusing the bundle")
    return path


def plain_path(path: str) -> bool:
    """No absolute or drive path, no '..', '.' or empty part, no backslash or NUL: it stays inside any folder."""
    parts = path.split("/")
    if not path or len(path) > 1024 or path.startswith("/") or "\\" in path or "\x00" in path:
        return False
    odd = any(p in ("", ".", "..") for p in parts) or ":" in parts[0]  # ':' would be a drive on Windows
    return not odd and PurePosixPath(path).as_posix() == path


class Item(BaseModel):
    """One thing unpack registers: its store kind, its name, and the member folder holding it."""

    model_config = ConfigDict(extra="forbid")

    kind: ItemKind
    name: str = Field(min_length=1)
    path: str
    version: int | None = None  # a preset's version in the store it was packed from

    @field_validator("path")
    @classmethod
    def _plain(cls, path: str) -> str:
        if not plain_path(path):
            raise ValueError(f"{path!r} is not a plain relative path")
        return path


class LicenseInfo(BaseModel):
    """The license id of the model (from its manifest) and the text of the bundled LICENSE, when it is text."""

    id: str | None = None
    file: str | None = None
    text: str | None = None


class BundleManifest(BaseModel):
    """`bundle.json`: what the bundle holds and the digest of every member after it."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    format_version: int = FORMAT_VERSION
    name: str
    kind: Literal["model", "adapter", "preset"]
    created_at: str = Field(default_factory=now_iso)
    tailorlm_version: str
    license: LicenseInfo = Field(default_factory=LicenseInfo)
    items: list[Item]  # what unpack registers, dependencies first
    members: dict[str, FileDigest]

    @field_validator("members")
    @classmethod
    def _plain_members(cls, members: dict[str, FileDigest]) -> dict[str, FileDigest]:
        for path, digest in members.items():
            if not plain_path(path):
                raise ValueError(f"member {path!r} is not a plain relative path")
            if path in (BUNDLE_JSON, BUNDLE_SIG) or digest.size < 0:
                raise ValueError(f"member {path!r} cannot be listed")
        return members

    @model_validator(mode="before")
    @classmethod
    def _known_format(cls, data: Any) -> Any:
        """Checked first: a newer format fails on its version, not on a field this tailorlm does not know."""
        version = data.get("format_version", FORMAT_VERSION) if isinstance(data, dict) else FORMAT_VERSION
        if version != FORMAT_VERSION:
            raise ValueError(f"format version {version} is not supported (this tailorlm reads version "
                             f"{FORMAT_VERSION}); upgrade tailorlm")
        return data

    @model_validator(mode="after")
    def _members_belong(self) -> BundleManifest:
        if len({(i.kind, i.name) for i in self.items}) != len(self.items) or \
                len({i.path for i in self.items}) != len(self.items):
            raise ValueError("an item is listed twice")
        if not any(i.kind == self.kind and i.name == self.name for i in self.items):
            raise ValueError(f"the bundle's own {self.kind} {self.name} is not among its items")
        prefixes = [f"{item.path}/" for item in self.items] + [f"{REPORTS}/"]
        for path in self.members:
            if path != LICENSE and not any(path.startswith(p) for p in prefixes):
                raise ValueError(f"member {path!r} belongs to nothing the bundle registers")
        return self

    def under(self, item: Item) -> dict[str, FileDigest]:
        """The members inside `item`'s folder, by their path relative to it."""
        prefix = f"{item.path}/"
        return {p[len(prefix):]: d for p, d in self.members.items() if p.startswith(prefix)}

    @classmethod
    def parse(cls, data: bytes, source: str) -> BundleManifest:
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join([BUNDLE_JSON, *(str(p) for p in first["loc"])])
            message = first["msg"].removeprefix("Value error, ")
            raise IntegrityError(f"refusing bundle {source}: it is not a valid tailor bundle: {where}: {message}") \
                from None


def safe_filename(name: str) -> str:
    """A file name for NAME: ':' and '/' (and anything else unusual) become '-'."""
    cleaned = "".join(c if c.isalnum() or c in "._-@" else "-" for c in name)
    return cleaned.strip("-.") or "bundle"
