"""Presets on disk: `HOME/presets/<name>/<version>.yaml`, every version kept; the bare name is the latest.

A version is written to a temporary file, fsynced and renamed into place, so a crash never leaves half a preset;
versions only ever grow, so `name@N` always means the same preset.
"""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from pathlib import Path

import yaml

from tailorlm.errors import InvalidRequestError, ModelNotFoundError
from tailorlm.presets.preset import Preset

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


def split_ref(ref: str) -> tuple[str, int | None]:
    """"name" -> (name, None: the latest); "name@2" -> (name, 2). Model names never contain '@'."""
    name, sep, version = ref.strip().partition("@")
    if sep and not version.isdigit():
        raise ModelNotFoundError(f"invalid preset version in {ref!r}: expected name@N")
    return name.lower(), int(version) if sep else None


def check_name(name: str) -> str:
    cleaned = name.strip().lower()
    if not _NAME.fullmatch(cleaned) or ".." in cleaned:
        raise InvalidRequestError(
            f"invalid preset name {name!r}: up to 64 lower-case letters, digits and . _ -", param="name")
    return cleaned


class PresetStore:
    def __init__(self, home: Path) -> None:
        self.root = Path(home) / "presets"

    def _folder(self, name: str) -> Path:
        return self.root / check_name(name)

    def versions(self, name: str) -> list[int]:
        folder = self.root / name
        if not _NAME.fullmatch(name) or not folder.is_dir():
            return []
        return sorted(int(p.stem) for p in folder.glob("*.yaml") if p.stem.isdigit())

    def find(self, ref: str) -> Preset | None:
        """The preset `ref` names (None when no preset has that name); an unknown version of a known preset: 404."""
        if "@" not in ref and not _NAME.fullmatch(ref.strip().lower()):
            return None
        name, version = split_ref(ref)
        versions = self.versions(name)
        if not versions:
            return None
        if version is None:
            version = versions[-1]
        elif version not in versions:
            raise ModelNotFoundError(f"preset {name} has no version {version} (versions: "
                                     f"{', '.join(map(str, versions))})")
        data = yaml.safe_load((self.root / name / f"{version}.yaml").read_text())
        return Preset.model_validate(data)

    def get(self, ref: str) -> Preset:
        found = self.find(ref)
        if found is None:
            raise ModelNotFoundError(f"preset {ref} does not exist; see `tailor preset list`")
        return found

    def list(self) -> list[Preset]:
        """The latest version of every preset, by name."""
        if not self.root.is_dir():
            return []
        names = sorted(p.name for p in self.root.iterdir() if p.is_dir() and _NAME.fullmatch(p.name))
        return [p for p in (self.find(n) for n in names) if p is not None]

    def add(self, preset: Preset) -> Preset:
        """Store `preset` as the next version of its name; returns it with its version and time."""
        name = check_name(preset.name)
        folder = self._folder(name)
        folder.mkdir(parents=True, exist_ok=True)
        while True:  # two writers racing for one version: os.link fails for the loser, who takes the next
            version = (self.versions(name) or [0])[-1] + 1
            stored = preset.model_copy(update={"name": name, "version": version, "created_at": int(time.time())})
            tmp = folder / f".tmp-{uuid.uuid4().hex}"
            with open(tmp, "w") as fh:
                yaml.safe_dump(stored.model_dump(mode="json", exclude_none=True), fh, sort_keys=False)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, folder / f"{version}.yaml")  # atomic and never overwrites
                return stored
            except FileExistsError:
                continue
            finally:
                tmp.unlink(missing_ok=True)

    def remove(self, ref: str) -> list[int]:
        """Remove one version (`name@N`) or every version (`name`); returns the versions removed."""
        preset = self.get(ref)
        name, version = split_ref(ref)
        if version is not None:
            (self.root / name / f"{version}.yaml").unlink()
            if not self.versions(name):
                shutil.rmtree(self.root / name, ignore_errors=True)
            return [version]
        versions = self.versions(preset.name)
        shutil.rmtree(self.root / preset.name)
        return versions
