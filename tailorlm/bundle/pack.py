"""`tailor pack`: one tar holding everything a model, adapter or preset needs to run elsewhere, written to
`FILE.partial` and renamed when complete. Store files are streamed (never read whole) and checked against their
store manifest as they are written, so a corrupted store never leaves in a bundle that claims to be good."""

from __future__ import annotations

import hashlib
import os
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tailorlm import __version__
from tailorlm.bundle import signing
from tailorlm.bundle.format import (
    BUNDLE_JSON, BUNDLE_SIG, LICENSE, REPORTS, SUFFIX, BundleManifest, Item, LicenseInfo, check_member, safe_filename,
)
from tailorlm.bundle.knowledge import export_kb
from tailorlm.config import Settings
from tailorlm.errors import IntegrityError, InvalidRequestError, ModelNotFoundError
from tailorlm.presets import PresetStore
from tailorlm.runtime.resolve import resolve as resolve_name
from tailorlm.store import AdapterStore, ModelStore
from tailorlm.store.catalogue import Catalogue
from tailorlm.store.digests import CHUNK, fsync_dir, hash_file
from tailorlm.store.manifest import MANIFEST_FILE, FileDigest, Manifest, StoredManifest
from tailorlm.store.names import folder_for, validate_name
from tailorlm.store.progress import Stages
from tailorlm.store.staging import Staging

LICENSE_TEXT_MAX = 256 * 1024  # a LICENSE longer than this is bundled but not copied into bundle.json


@dataclass
class Member:
    """One file to write: its member path, where it is now, and its digest (from a store manifest if `checked`)."""

    path: str
    file: Path
    digest: FileDigest
    checked: bool = False  # the digest is the store's: compared with the bytes as they are written


class _Plan:
    """The items and members of one bundle, collected before anything is written (bundle.json comes first)."""

    def __init__(self, settings: Settings, work: Path) -> None:
        self.settings, self.work = settings, work
        self.models, self.adapters = ModelStore(settings.home), AdapterStore(settings.home)
        self.items: list[Item] = []
        self.members: list[Member] = []
        self.license = LicenseInfo()

    def add_file(self, path: str, file: Path) -> None:
        self.members.append(Member(check_member(path), file, FileDigest(sha256=hash_file(file),
                                                                         size=file.stat().st_size)))

    def add_stored(self, kind: str, store: Catalogue, manifest: StoredManifest) -> None:
        """A store folder as it is: its files (digests from its manifest) and the manifest itself."""
        prefix = f"{kind}s/{folder_for(manifest.name)}"
        folder = store.folder(manifest.name)
        self.items.append(Item(kind=kind, name=manifest.name, path=prefix))
        for rel, digest in sorted(manifest.files.items()):
            self.members.append(Member(f"{prefix}/{rel}", folder / rel, digest, checked=True))
        self.add_file(f"{prefix}/{MANIFEST_FILE}", folder / MANIFEST_FILE)

    def add_model(self, name: str) -> Manifest:
        manifest = self.models.get(name)
        self.add_stored("model", self.models, manifest)
        licenses = sorted(r for r in manifest.files if r.split("/")[-1].upper().startswith("LICENSE"))
        self.license = LicenseInfo(id=manifest.license, file=LICENSE)
        if licenses:
            source = self.models.folder(manifest.name) / licenses[0]
            self.members.append(Member(LICENSE, source, manifest.files[licenses[0]], checked=True))
        else:  # the id is all the store knows; say so rather than leave a licence out silently
            source = self.work / LICENSE
            source.write_text(f"License: {manifest.license}\n" if manifest.license else
                              f"The license of {manifest.name} is not recorded in its files; check its terms "
                              "with its publisher before you use or share it.\n")
            self.add_file(LICENSE, source)
        if source.stat().st_size <= LICENSE_TEXT_MAX:
            try:
                self.license.text = source.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                pass
        return manifest

    def add_adapter(self, name: str) -> None:
        manifest = self.adapters.get(name)
        self.add_model(manifest.base)
        self.add_stored("adapter", self.adapters, manifest)

    def add_preset(self, ref: str) -> str:
        store = PresetStore(self.settings.home)
        preset = store.get(ref)
        if preset.adapter:
            self.add_adapter(preset.adapter)
        else:
            self.add_model(preset.model)
        for knowledge in preset.knowledge:
            folder = self.work / "knowledge" / validate_name(knowledge.name, "knowledge base")
            if folder.exists():
                continue
            folder.mkdir(parents=True)
            kb_name = export_kb(self.settings, knowledge.name, folder)
            self.items.append(Item(kind="knowledge_base", name=kb_name, path=f"knowledge/{kb_name}"))
            for file in sorted(folder.iterdir()):
                self.add_file(f"knowledge/{kb_name}/{file.name}", file)
        self.items.append(Item(kind="preset", name=preset.name, path=f"presets/{preset.name}", version=preset.version))
        self.add_file(f"presets/{preset.name}/preset.yaml", store.root / preset.name / f"{preset.version}.yaml")
        return preset.name

    def add_reports(self, folder: Path) -> None:
        if not folder.is_dir():
            raise InvalidRequestError(f"report folder {folder} does not exist", param="report")
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            self.add_file(f"{REPORTS}/{file.relative_to(folder).as_posix()}", file)


def resolve(settings: Settings, name: str) -> tuple[str, str]:
    """(kind, name) of what NAME is in the store (runtime/resolve.py): a preset, an adapter or a model."""
    found = resolve_name(name, settings)
    if found.manifest is None and found.adapter is None:  # an embedded default not pulled yet: nothing to pack
        ModelStore(settings.home).get(found.model)
    return found.kind, found.name


def default_output(name: str) -> Path:
    return Path.cwd() / f"{safe_filename(name)}{SUFFIX}"


def pack_bundle(settings: Settings, name: str, output: Path | None = None, *, sign_key: Path | None = None,
                report: Path | None = None, show_progress: bool = True) -> tuple[Path, BundleManifest]:
    """Write the bundle of NAME to `output` (default ./NAME.tailor); returns its path and its bundle.json."""
    kind, key = resolve(settings, name)
    output = Path(output).expanduser() if output is not None else default_output(key)
    if output.is_dir():
        output = output / default_output(key).name
    if not output.parent.is_dir():
        raise InvalidRequestError(f"folder {output.parent} does not exist", param="output")
    with Staging(settings.home / "tmp") as staging:
        plan = _Plan(settings, staging.new_dir())
        if kind == "model":
            plan.add_model(key)
        elif kind == "adapter":
            plan.add_adapter(key)
        else:
            key = plan.add_preset(key)
        if report is not None:
            plan.add_reports(Path(report).expanduser())
        manifest = BundleManifest(name=key, kind=kind, tailorlm_version=__version__, license=plan.license,
                                  items=plan.items, members={m.path: m.digest for m in plan.members})
        data = manifest.model_dump_json(indent=2).encode()
        signature = signing.sign(sign_key, data) if sign_key is not None else None
        total = sum(m.digest.size for m in plan.members)
        with Stages(f"packing {key}", enabled=show_progress) as stages:
            _write(output, data, signature, plan.members, stages.bytes("writing", total))
    return output, manifest


def _write(output: Path, data: bytes, signature: bytes | None, members: list[Member],
           advance: Callable[[int], None]) -> None:
    partial = output.with_name(output.name + ".partial")
    mtime = int(time.time())
    try:
        with open(partial, "wb") as fh:
            with tarfile.open(fileobj=fh, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                _add_bytes(tar, BUNDLE_JSON, data, mtime)
                if signature is not None:
                    _add_bytes(tar, BUNDLE_SIG, signature, mtime)
                for member in members:
                    _add_file(tar, member, mtime, advance)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(partial, output)
        fsync_dir(output.parent)
    finally:
        partial.unlink(missing_ok=True)


def _info(path: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(path)
    info.size, info.mtime, info.mode, info.type = size, mtime, 0o644, tarfile.REGTYPE
    return info


def _add_bytes(tar: tarfile.TarFile, path: str, data: bytes, mtime: int) -> None:
    import io

    tar.addfile(_info(path, len(data), mtime), io.BytesIO(data))


class _Hashing:
    """A file read through sha256 and the progress bar, as tarfile copies it."""

    def __init__(self, fh: BinaryIO, advance: Callable[[int], None]) -> None:
        self.fh, self.advance, self.sha = fh, advance, hashlib.sha256()

    def read(self, size: int = CHUNK) -> bytes:
        data = self.fh.read(size)
        self.sha.update(data)
        self.advance(len(data))
        return data


def _add_file(tar: tarfile.TarFile, member: Member, mtime: int, advance: Callable[[int], None]) -> None:
    expected = member.digest
    with open(member.file, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size != expected.size:
            raise IntegrityError(f"{member.file} has {size} bytes, but its manifest says {expected.size}; "
                                 "it is corrupted or changed: re-import it before packing")
        reader = _Hashing(fh, advance)
        try:
            tar.addfile(_info(member.path, size, mtime), reader)  # type: ignore[arg-type]
        except OSError as exc:
            raise IntegrityError(f"{member.file} could not be read whole while packing: {exc}") from None
    if reader.sha.hexdigest() != expected.sha256:
        raise IntegrityError(f"{member.file} does not match the sha256 in its manifest; it is corrupted: re-import "
                             "it before packing")
