"""`tailor unpack`: check the whole bundle first (reader.py), refuse a name the store already uses for something
different (unless forced), then register each item through its store's own atomic path: models and adapters are
published with one rename after their files are hashed against their manifest, a knowledge base is one SQLite
transaction, a preset a new version. The LICENSE, eval reports and bundle.json land in HOME/bundles/NAME/."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from tailorlm import db
from tailorlm.bundle.format import BUNDLE_JSON, BUNDLE_SIG, LICENSE, REGISTER_ORDER, REPORTS, BundleManifest, Item, \
    safe_filename
from tailorlm.bundle.knowledge import CONTENT, export_kb, import_kb, read_head
from tailorlm.bundle.reader import Verified, read_bundle
from tailorlm.config import Settings
from tailorlm.errors import AlreadyExistsError, IntegrityError, InvalidRequestError, TailorError
from tailorlm.presets import Preset, PresetStore
from tailorlm.presets.checks import create_preset
from tailorlm.store import AdapterManifest, AdapterStore, Manifest, ModelStore
from tailorlm.store.catalogue import Catalogue
from tailorlm.store.digests import digest_folder
from tailorlm.store.manifest import MANIFEST_FILE, FileDigest
from tailorlm.store.names import validate_name
from tailorlm.store.staging import Staging

State = Literal["absent", "same", "different"]
_PRESET_CONTENT = {"version", "created_at"}  # a preset's version is the receiving store's to give


@dataclass
class Outcome:
    item: Item
    status: Literal["added", "replaced", "unchanged"]


@dataclass
class Unpacked:
    manifest: BundleManifest
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def unchanged(self) -> bool:
        return all(o.status == "unchanged" for o in self.outcomes)


def unpack_bundle(settings: Settings, file: Path, *, verify_key: Path | None = None, force: bool = False,
                  show_progress: bool = True) -> Unpacked:
    """Verify then register everything in `file`; re-unpacking the same bundle changes nothing."""
    file = Path(file).expanduser()
    if not file.is_file():
        raise InvalidRequestError(f"bundle {file} does not exist", param="file")
    with Staging(settings.home / "tmp") as staging:
        dest = staging.new_dir()
        states: dict[tuple[str, str], State] = {}

        def select(manifest: BundleManifest) -> Callable[[str], bool]:
            """Models and adapters stored byte for byte already are checked but not written out again."""
            for item in manifest.items:
                if item.kind in ("model", "adapter"):
                    states[(item.kind, item.name)] = _stored_state(settings, manifest, item)
            skip = tuple(f"{i.path}/" for i in manifest.items if states.get((i.kind, i.name)) == "same")
            return lambda path: not path.startswith(skip) if skip else True

        verified = read_bundle(file, dest, verify_key=verify_key, select=select, show_progress=show_progress)
        manifest = verified.manifest
        # Every digest matched; nothing is registered yet. Now: what would change?
        items = sorted(manifest.items, key=lambda i: REGISTER_ORDER.index(i.kind))
        for item in items:
            if (item.kind, item.name) not in states:
                states[(item.kind, item.name)] = _content_state(settings, manifest, item, dest, staging)
        different = [i for i in items if states[(i.kind, i.name)] == "different"]
        if different and not force:
            first = different[0]
            raise AlreadyExistsError(f"{first.kind.replace('_', ' ')} {first.name} is already in the store and "
                                     f"differs from the one in {file.name}; use --force to replace it")
        todo = [i for i in items if states[(i.kind, i.name)] != "same"]
        _check_embedding_models(dest, todo)
        result = Unpacked(manifest)
        for item in items:
            state = states[(item.kind, item.name)]
            if state != "same":
                _register(settings, item, dest / item.path, staging, replace=state == "different", file=file)
            result.outcomes.append(Outcome(item, {"absent": "added", "same": "unchanged",
                                                  "different": "replaced"}[state]))
        extras = settings.home / "bundles" / safe_filename(manifest.name)
        if not result.unchanged or not (extras / BUNDLE_JSON).is_file():
            _keep_extras(verified, dest, staging, extras)
    return result


def _store(settings: Settings, kind: str) -> Catalogue:
    return ModelStore(settings.home) if kind == "model" else AdapterStore(settings.home)


def _stored_state(settings: Settings, manifest: BundleManifest, item: Item) -> State:
    """A model or adapter: the same name stored with the same file digests is the same item."""
    existing = _store(settings, item.kind).find(validate_name(item.name))
    if existing is None:
        return "absent"
    bundled = {rel: d for rel, d in manifest.under(item).items() if rel != MANIFEST_FILE}
    return "same" if bundled == existing.files else "different"


def _content_state(settings: Settings, manifest: BundleManifest, item: Item, dest: Path, staging: Staging) -> State:
    if item.kind == "preset":
        bundled = _bundled_preset(dest / item.path, item)
        existing = PresetStore(settings.home).find(bundled.name)
        if existing is None:
            return "absent"
        keep = set(Preset.model_fields) - _PRESET_CONTENT
        return "same" if existing.model_dump(include=keep) == bundled.model_dump(include=keep) else "different"
    head = read_head(dest / item.path, f"{item.path}/kb.json")
    conn = db.connect(settings.db_path)
    try:
        row = conn.execute("SELECT name FROM kb WHERE name = ? OR id = ? ORDER BY name = ? DESC",
                           (item.name, head["kb"]["id"], item.name)).fetchone()
    finally:
        conn.close()
    if row is None:
        return "absent"
    if row["name"] != item.name:
        return "different"
    mine = staging.new_dir()  # the stored base exported the same way: equal files mean equal bases
    export_kb(settings, item.name, mine)
    bundled = manifest.under(item)
    ours = digest_folder(mine)
    return "same" if all(ours.get(f) == bundled.get(f) for f in CONTENT) else "different"


def _bundled_preset(folder: Path, item: Item) -> Preset:
    try:
        preset = Preset.parse(yaml.safe_load((folder / "preset.yaml").read_text(encoding="utf-8")))
    except (OSError, yaml.YAMLError) as exc:
        raise IntegrityError(f"{item.path}/preset.yaml cannot be read: {exc}") from None
    if preset.name != item.name:
        raise IntegrityError(f"{item.path}/preset.yaml is preset {preset.name}, but bundle.json says {item.name}")
    return preset


def _check_embedding_models(dest: Path, items: list[Item]) -> None:
    """A knowledge base is only searchable with the model that embedded it: refuse before registering anything."""
    from tailorlm.embeddings import packaged_folder

    for item in items:
        if item.kind == "knowledge_base":
            head = read_head(dest / item.path, f"{item.path}/kb.json")
            try:
                packaged_folder(head["kb"]["embedding_model"])
            except TailorError as exc:
                raise type(exc)(f"knowledge base {item.name} needs its embedding model: {exc.message}") from None


def _register(settings: Settings, item: Item, staged: Path, staging: Staging, *, replace: bool, file: Path) -> None:
    if item.kind in ("model", "adapter"):
        _publish(settings, item, staged, staging, replace=replace, file=file)
    elif item.kind == "knowledge_base":
        import_kb(settings, staged, f"{item.path}/kb.json", replace=replace)
    else:
        create_preset(settings, _bundled_preset(staged, item))


def _publish(settings: Settings, item: Item, staged: Path, staging: Staging, *, replace: bool, file: Path) -> None:
    """The store's own publish: files hashed against the bundled store manifest, manifest last, one rename."""
    store = _store(settings, item.kind)
    kind: type[Manifest] | type[AdapterManifest] = Manifest if item.kind == "model" else AdapterManifest
    try:
        manifest = kind.read(staged)
    except (OSError, ValueError) as exc:
        raise IntegrityError(f"{item.path}/{MANIFEST_FILE} in {file.name} is not a valid {item.kind} manifest: "
                             f"{exc}") from None
    if manifest.name != validate_name(item.name):
        raise IntegrityError(f"{item.path}/{MANIFEST_FILE} names {manifest.name}, but bundle.json says {item.name}")
    if isinstance(manifest, AdapterManifest):
        ModelStore(settings.home).get(manifest.base)  # its base was registered first, or was there

    def checked(files: dict[str, FileDigest]) -> Manifest | AdapterManifest:
        if files != manifest.files:
            wrong = sorted(set(files) ^ set(manifest.files)) or sorted(
                r for r in files if files[r] != manifest.files[r])
            raise IntegrityError(f"{item.kind} {item.name} in {file.name} does not match its manifest at {wrong[0]}")
        return manifest

    store.publish(staged, staging, checked, overwrite=replace)


def _keep_extras(verified: Verified, dest: Path, staging: Staging, target: Path) -> None:
    """LICENSE, reports and bundle.json (with its signature) beside the store, replaced as one folder."""
    folder = staging.new_dir()
    (folder / BUNDLE_JSON).write_bytes(verified.raw)
    if verified.signature is not None:
        (folder / BUNDLE_SIG).write_bytes(verified.signature)
    for name in (LICENSE, REPORTS):
        if (dest / name).exists():
            shutil.move(dest / name, folder / name)
    staging.publish(folder, target, verified.manifest.name, overwrite=True, kind="bundle")
