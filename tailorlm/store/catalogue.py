"""What the model store and the adapter store share: named folders, each complete with its manifest or absent."""

from __future__ import annotations

import builtins
import difflib
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from tailorlm.errors import AlreadyExistsError
from tailorlm.store.digests import digest_folder, stored_files, verify_files
from tailorlm.store.manifest import MANIFEST_FILE, StoredManifest
from tailorlm.store.names import folder_for, validate_name
from tailorlm.store.staging import Staging

M = TypeVar("M", bound=StoredManifest)


class Catalogue(Generic[M]):
    """Items under `root/<folder_for(name)>/`; `kind` ("model", "adapter") names them in messages."""

    kind: str
    manifest_type: type[M]

    def __init__(self, root: Path, tmp_dir: Path) -> None:
        self.root = root
        self.tmp_dir = tmp_dir

    def list(self) -> builtins.list[M]:
        """Every complete item, sorted by name (a folder without a valid manifest is not an item)."""
        found = []
        if self.root.is_dir():
            for folder in self.root.iterdir():
                if (folder / MANIFEST_FILE).is_file():
                    try:
                        found.append(self.manifest_type.read(folder))
                    except ValueError:
                        continue
        return sorted(found, key=lambda m: m.name)

    def find(self, name: str) -> M | None:
        """The manifest of `name`, or None when no such item is stored."""
        key = validate_name(name)
        folder = self.root / folder_for(key)
        if (folder / MANIFEST_FILE).is_file():
            manifest = self.manifest_type.read(folder)
            if manifest.name == key:
                return manifest
        return None

    def close_match(self, name: str) -> str:
        """"did you mean X? " for the nearest stored name, or ""."""
        close = difflib.get_close_matches(name, [m.name for m in self.list()], n=1)
        return f"did you mean {close[0]}? " if close else ""

    def folder(self, name: str) -> Path:
        return self.root / folder_for(name)

    def check_absent(self, key: str) -> None:
        """AlreadyExistsError if `key` is stored (checked early, so no work is wasted)."""
        if (self.folder(key) / MANIFEST_FILE).exists():
            raise AlreadyExistsError(f"{self.kind} {key} is already in the store; use --force to replace it")

    def verify_item(self, manifest: M, fix: str) -> None:
        """IntegrityError naming the first file whose size or sha256 differs from the manifest."""
        verify_files(self.folder(manifest.name), manifest.files, manifest.name, fix)

    def remove_item(self, manifest: M) -> None:
        """Renamed out of the catalogue first, so no half-deleted item is ever listed."""
        with Staging(self.tmp_dir) as staging:
            trash = staging.new_dir()
            self.folder(manifest.name).rename(trash / "item")

    def publish(self, staged: Path, staging: Staging, manifest_of: Callable[[dict], M], *,
                overwrite: bool, advance: Callable[[int], None] | None = None) -> M:
        """Hash the staged files, write the manifest last, then publish with one rename."""
        files = digest_folder(staged, advance)
        manifest = manifest_of(files)
        manifest.write(staged)
        staging.publish(staged, self.folder(manifest.name), manifest.name, overwrite=overwrite, kind=self.kind)
        return manifest

    @staticmethod
    def staged_bytes(staged: Path) -> int:
        return sum(p.stat().st_size for p in stored_files(staged))
