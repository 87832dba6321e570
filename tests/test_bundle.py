"""Portable bundles: pack a model, an adapter or a preset (with its knowledge base), unpack into a fresh store
with the same digests, outputs and search results; tampered, truncated, hostile and wrongly signed bundles are
refused before anything is registered; `tailor pack | unpack | keygen | serve FILE` on the command line."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import tailorlm.cli.bundle  # noqa: F401  (registers the verbs on `app`)
import tailorlm.cli.serve as serve_cli
from tailorlm.bundle import keygen, pack_bundle, unpack_bundle
from tailorlm.bundle.format import BUNDLE_JSON, BUNDLE_SIG
from tailorlm.cli import app
from tailorlm.config import Settings, get_settings
from tailorlm.errors import AlreadyExistsError, IntegrityError, InvalidRequestError, TailorError
from tailorlm.presets import KnowledgeRef, Preset, PresetStore
from tailorlm.presets.checks import create_preset
from tailorlm.store import AdapterStore, ModelStore
from tests.tiny import make_tiny_adapter, make_tiny_model, save_tiny_tokenizer

BASE = "tiny"
ADAPTER = "ft:tiny:desk:ftjob-0a1b2c"
HANDBOOK = """# Handbook

## Refunds

Refunds are paid back to the original card within fourteen days of the request.

## Support

Our helpdesk answers the telephone from nine to five on weekdays.
"""


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny llama with a tokenizer and chat template, and a LoRA adapter over it."""
    root = tmp_path_factory.mktemp("src")
    base = make_tiny_model("llama", root / "base")
    save_tiny_tokenizer(base)
    return base, make_tiny_adapter(base, root / "adapter", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])


@pytest.fixture(scope="module")
def embeddings():
    from tailorlm.embeddings import EmbeddingModels

    return EmbeddingModels("all-minilm-l6-v2")  # one loaded model for the whole module


@pytest.fixture
def source(tailor_home: Path, folders) -> Settings:
    """The packing machine's store, holding the tiny model."""
    ModelStore(tailor_home).import_path(folders[0], name=BASE, show_progress=False)
    return Settings(home=tailor_home)


@pytest.fixture
def fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Switch TAILOR_HOME to a new, empty store (the other machine); returns a function doing so."""
    def switch(name: str = "other-home") -> Settings:
        home = tmp_path / name
        monkeypatch.setenv("TAILOR_HOME", str(home))
        get_settings.cache_clear()
        return Settings(home=home)

    return switch


def _pack(settings: Settings, name: str, tmp_path: Path, **kw) -> Path:
    path, _ = pack_bundle(settings, name, tmp_path / "out.tailor", show_progress=False, **kw)
    return path


def _greedy(folder: Path, n: int = 8) -> list[int]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)
    prompt = torch.tensor([[1, 17, 42, 99, 5]])
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, prompt.shape[1]:].tolist()


def _member_offset(bundle: Path, suffix: str) -> tuple[str, int]:
    with tarfile.open(bundle) as tar:
        info = next(m for m in tar.getmembers() if m.name.endswith(suffix))
        return info.name, info.offset_data


def _nothing_registered(settings: Settings) -> None:
    assert ModelStore(settings.home).list() == [] and AdapterStore(settings.home).list() == []
    tmp = settings.home / "tmp"
    assert not tmp.exists() or list(tmp.iterdir()) == []


def test_model_roundtrip_same_digests_and_tokens(source: Settings, fresh, tmp_path: Path) -> None:
    report = tmp_path / "eval-report"
    report.mkdir()
    (report / "report.md").write_text("# Eval\n\nloss 1.23\n")
    bundle = _pack(source, BASE, tmp_path, report=report)
    with tarfile.open(bundle) as tar:
        names = tar.getnames()
        head = json.loads(tar.extractfile(BUNDLE_JSON).read())
    assert names[0] == BUNDLE_JSON and set(names[1:]) == set(head["members"])
    assert {"models/tiny/model.safetensors", "models/tiny/tokenizer.json", "models/tiny/config.json", "LICENSE",
            "reports/report.md", "models/tiny/manifest.json"} <= set(names)
    assert head["kind"] == "model" and head["items"] == [{"kind": "model", "name": BASE, "path": "models/tiny",
                                                          "version": None}]
    original, reference = ModelStore(source.home).get(BASE), _greedy(ModelStore(source.home).path(BASE))

    other = fresh()
    result = unpack_bundle(other, bundle, show_progress=False)
    assert [o.status for o in result.outcomes] == ["added"]
    store = ModelStore(other.home)
    assert store.get(BASE) == original  # the same manifest: every digest, the source and the dates
    store.verify(BASE)
    assert _greedy(store.path(BASE)) == reference
    assert (other.home / "bundles" / BASE / "reports" / "report.md").read_text().startswith("# Eval")
    assert (other.home / "bundles" / BASE / "LICENSE").is_file()
    assert list((other.home / "tmp").iterdir()) == []

    again = unpack_bundle(other, bundle, show_progress=False)
    assert again.unchanged and store.get(BASE) == original


def test_adapter_bundle_brings_its_base(source: Settings, folders, fresh, tmp_path: Path) -> None:
    adapter = AdapterStore(source.home).add(ADAPTER, BASE, folders[1])
    bundle = _pack(source, ADAPTER, tmp_path)
    other = fresh()
    result = unpack_bundle(other, bundle, show_progress=False)
    assert [(o.item.kind, o.status) for o in result.outcomes] == [("model", "added"), ("adapter", "added")]
    assert AdapterStore(other.home).get(ADAPTER) == adapter
    AdapterStore(other.home).verify(ADAPTER)
    assert ModelStore(other.home).get(BASE) == ModelStore(source.home).get(BASE)


def test_preset_with_adapter_and_knowledge_base(source: Settings, folders, fresh, tmp_path: Path,
                                                embeddings) -> None:
    from tailorlm.kb import KnowledgeBases

    AdapterStore(source.home).add(ADAPTER, BASE, folders[1])
    kbs = KnowledgeBases(source, embeddings=embeddings)
    kbs.create("handbook", metadata={"team": "support"})
    doc = tmp_path / "handbook.md"
    doc.write_text(HANDBOOK)
    assert kbs.add_paths("handbook", [doc], attributes={"lang": "en"})[0].status == "added"
    preset = create_preset(source, Preset(name="desk", model=BASE, adapter=ADAPTER, system="Be brief.",
                                          parameters={"temperature": 0.2},
                                          knowledge=[KnowledgeRef(name="handbook", k=2)]))
    query = "when are refunds paid"
    expected = [(h.chunk_id, h.file_id, h.text, h.attributes) for h in kbs.search("handbook", query, k=3)]
    kb, files = kbs.get("handbook"), kbs.files("handbook")
    bundle = _pack(source, "desk", tmp_path)

    other = fresh()
    result = unpack_bundle(other, bundle, show_progress=False)
    assert [(o.item.kind, o.status) for o in result.outcomes] == [
        ("model", "added"), ("adapter", "added"), ("knowledge_base", "added"), ("preset", "added")]
    got = PresetStore(other.home).get("desk")
    assert got.model_dump(exclude={"created_at"}) == preset.model_dump(exclude={"created_at"})
    assert AdapterStore(other.home).get(ADAPTER) == AdapterStore(source.home).get(ADAPTER)
    theirs = KnowledgeBases(other, embeddings=embeddings)
    assert (theirs.get("handbook").id, theirs.get("handbook").metadata) == (kb.id, kb.metadata)
    assert [(f.id, f.filename, f.sha256, f.attributes, f.chunks) for f in theirs.files("handbook")] == \
        [(f.id, f.filename, f.sha256, f.attributes, f.chunks) for f in files]
    for mode in ("hybrid", "vector", "keyword"):
        assert [(h.chunk_id, h.file_id, h.text, h.attributes) for h in theirs.search("handbook", query, k=3,
                                                                                       mode=mode)] == \
            [(h.chunk_id, h.file_id, h.text, h.attributes) for h in kbs.search("handbook", query, k=3, mode=mode)]
    assert [(h.chunk_id, h.file_id, h.text, h.attributes) for h in theirs.search("handbook", query, k=3)] == expected

    assert unpack_bundle(other, bundle, show_progress=False).unchanged  # the same bundle again: nothing to do
    assert PresetStore(other.home).versions("desk") == [1]

    create_preset(other, Preset(name="desk", model=BASE, system="Something else."))  # now the names clash
    with pytest.raises(AlreadyExistsError, match="preset desk .*--force"):
        unpack_bundle(other, bundle, show_progress=False)
    result = unpack_bundle(other, bundle, force=True, show_progress=False)
    assert [o.status for o in result.outcomes] == ["unchanged", "unchanged", "unchanged", "replaced"]
    assert PresetStore(other.home).get("desk").system == "Be brief."


def _exported_handbook(source: Settings, tmp_path: Path, embeddings) -> Path:
    """The folder a bundle holds for a knowledge base "handbook" of a few chunks."""
    from tailorlm.bundle.knowledge import export_kb
    from tailorlm.kb import KnowledgeBases

    kbs = KnowledgeBases(source, embeddings=embeddings)
    kbs.create("handbook")
    doc = tmp_path / "handbook.md"
    doc.write_text(HANDBOOK * 3)
    kbs.add_paths("handbook", [doc])
    folder = tmp_path / "export"
    folder.mkdir()
    export_kb(source, "handbook", folder)
    return folder


def test_knowledge_base_import_is_one_transaction(source: Settings, fresh, tmp_path: Path, embeddings) -> None:
    from tailorlm.bundle.knowledge import CHUNKS, import_kb
    from tailorlm.kb import KnowledgeBases

    folder = _exported_handbook(source, tmp_path, embeddings)
    lines = (folder / CHUNKS).read_text().splitlines()
    assert len(lines) >= 2
    last = json.loads(lines[-1])
    last["file_id"] = "file-nobody"  # breaks a foreign key on the last row: everything before must go too
    (folder / CHUNKS).write_text("\n".join([*lines[:-1], json.dumps(last)]) + "\n")
    other = fresh()
    with pytest.raises(IntegrityError, match="cannot be imported"):
        import_kb(other, folder, "knowledge/handbook/kb.json", replace=False)
    theirs = KnowledgeBases(other, embeddings=embeddings)
    assert theirs.list() == []
    assert theirs.conn.execute("SELECT count(*) FROM kb_chunks").fetchone()[0] == 0
    assert theirs.conn.execute("SELECT count(*) FROM kb_fts").fetchone()[0] == 0


def test_tampered_member_is_refused_by_name(source: Settings, fresh, tmp_path: Path) -> None:
    bundle = _pack(source, BASE, tmp_path)
    name, offset = _member_offset(bundle, "model.safetensors")
    with open(bundle, "r+b") as fh:
        fh.seek(offset + 200)
        byte = fh.read(1)
        fh.seek(offset + 200)
        fh.write(bytes([byte[0] ^ 0xFF]))
    other = fresh()
    with pytest.raises(IntegrityError, match=f"member {name} is corrupted"):
        unpack_bundle(other, bundle, show_progress=False)
    _nothing_registered(other)


def test_truncated_bundle_is_refused_by_name(source: Settings, fresh, tmp_path: Path) -> None:
    bundle = _pack(source, BASE, tmp_path)
    name, offset = _member_offset(bundle, "model.safetensors")
    os.truncate(bundle, offset + 1000)
    other = fresh()
    with pytest.raises(IntegrityError, match=f"truncated: member {name} is cut short"):
        unpack_bundle(other, bundle, show_progress=False)
    _nothing_registered(other)
    with open(bundle, "r+b") as fh:  # cut between members: the next listed member is named as missing
        fh.truncate(offset - 512)
    with pytest.raises(IntegrityError, match=rf"member {name} is (cut short or )?missing"):
        unpack_bundle(other, bundle, show_progress=False)
    _nothing_registered(other)


def _rewrite(bundle: Path, out: Path, extra: tarfile.TarInfo, data: bytes = b"", *, list_it: bool = False) -> Path:
    """`bundle` with one more member appended (and listed in bundle.json if `list_it`)."""
    import hashlib

    with tarfile.open(bundle) as src, tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as dst:
        for info in src.getmembers():
            payload = src.extractfile(info).read()
            if info.name == BUNDLE_JSON and list_it:
                head = json.loads(payload)
                head["members"][extra.name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                payload = json.dumps(head).encode()
                info.size = len(payload)
            dst.addfile(info, io.BytesIO(payload))
        dst.addfile(extra, io.BytesIO(data) if extra.isreg() else None)
    return out


def test_hostile_members_are_refused(source: Settings, fresh, tmp_path: Path) -> None:
    bundle = _pack(source, BASE, tmp_path)
    other = fresh()
    outside = tmp_path / "evil"
    evil = tarfile.TarInfo("models/tiny/../../../evil")
    evil.size = 4
    cases = {
        "traversal": (_rewrite(bundle, tmp_path / "a.tailor", evil, b"evil"), "not a plain relative path"),
        "absolute": (_rewrite(bundle, tmp_path / "b.tailor", _sized(f"{outside}", 4), b"evil"), "plain relative"),
        "unlisted": (_rewrite(bundle, tmp_path / "c.tailor", _sized("models/tiny/extra.bin", 4), b"evil"),
                     "member models/tiny/extra.bin is not listed"),
        "symlink": (_rewrite(bundle, tmp_path / "d.tailor", _link("models/tiny/link", "/etc/passwd")),
                    "member models/tiny/link is a link"),
    }
    for why, (path, message) in cases.items():
        with pytest.raises(IntegrityError, match=message):
            unpack_bundle(other, path, show_progress=False)
        _nothing_registered(other)
    assert not outside.exists()
    listed = _rewrite(bundle, tmp_path / "e.tailor", _sized("models/../evil", 4), b"evil", list_it=True)
    with pytest.raises(IntegrityError, match="not a valid tailor bundle"):
        unpack_bundle(other, listed, show_progress=False)
    (tmp_path / "f.tailor").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(IntegrityError, match="not a tailor bundle"):
        unpack_bundle(other, tmp_path / "f.tailor", show_progress=False)
    sparse = _sized("models/tiny/sparse.bin", 4)
    sparse.type = tarfile.GNUTYPE_SPARSE  # a member that would expand on disk beyond its bytes in the tar
    with pytest.raises(IntegrityError, match="is a link, folder or special file"):
        unpack_bundle(other, _rewrite(bundle, tmp_path / "g.tailor", sparse, b"evil"), show_progress=False)
    # a member declared far larger than the disk: refused before anything is written
    with tarfile.open(bundle) as src, tarfile.open(tmp_path / "h.tailor", "w", format=tarfile.PAX_FORMAT) as dst:
        for info in src.getmembers():
            payload = src.extractfile(info).read()
            if info.name == BUNDLE_JSON:
                head = json.loads(payload)
                head["members"]["models/tiny/huge.bin"] = {"sha256": "0" * 64, "size": 2**60}
                payload = json.dumps(head).encode()
                info.size = len(payload)
            dst.addfile(info, io.BytesIO(payload))
    with pytest.raises(TailorError, match="GiB free"):
        unpack_bundle(other, tmp_path / "h.tailor", show_progress=False)
    _nothing_registered(other)


def test_zip_bombs_are_refused_before_inflating(tmp_path: Path) -> None:
    """A .docx is a zip a parser inflates whole: one declaring gigabytes, or inflating 1000x, is refused from
    its central directory, before any part is read."""
    import zipfile

    from tailorlm.kb.extract import ExtractionError, extract

    bomb = tmp_path / "bomb.docx"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("word/document.xml", b"\0" * (64 * 2**20))  # 64 MiB of zeros deflate ~1000x
    with pytest.raises(ExtractionError, match="zip bomb"):
        extract(bomb)
    (tmp_path / "junk.docx").write_bytes(b"not a zip")
    with pytest.raises(ExtractionError, match="not a readable"):
        extract(tmp_path / "junk.docx")


def _sized(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    return info


def _link(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


def test_signing(source: Settings, fresh, tmp_path: Path) -> None:
    key, pub = keygen(tmp_path / "signer")
    assert pub == tmp_path / "signer.pub" and (key.stat().st_mode & 0o777) == 0o600
    other_key, other_pub = keygen(tmp_path / "stranger")
    with pytest.raises(InvalidRequestError, match="already exists"):
        keygen(tmp_path / "signer")
    signed = _pack(source, BASE, tmp_path, sign_key=key)
    with tarfile.open(signed) as tar:
        assert tar.getnames()[:2] == [BUNDLE_JSON, BUNDLE_SIG]
    unsigned, _ = pack_bundle(source, BASE, tmp_path / "unsigned.tailor", show_progress=False)

    other = fresh()
    with pytest.raises(IntegrityError, match="does not match"):
        unpack_bundle(other, signed, verify_key=other_pub, show_progress=False)
    with pytest.raises(IntegrityError, match="not signed"):
        unpack_bundle(other, unsigned, verify_key=pub, show_progress=False)
    _nothing_registered(other)
    assert [o.status for o in unpack_bundle(other, signed, verify_key=pub, show_progress=False).outcomes] == ["added"]
    assert (other.home / "bundles" / BASE / BUNDLE_SIG).is_file()


def _tailor(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TAILOR_HOME": str(home)}
    return subprocess.run([sys.executable, "-c", "from tailorlm.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=300, env=env)


def test_cli_pack_unpack_keygen_and_errors(source: Settings, fresh, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["keygen", str(tmp_path / "k")]).exit_code == 0
    done = runner.invoke(app, ["pack", BASE, "--sign", str(tmp_path / "k")])
    assert done.exit_code == 0, done.output
    bundle = tmp_path / "tiny.tailor"
    assert bundle.is_file() and not (tmp_path / "tiny.tailor.partial").exists()

    other = fresh()
    served: list[Settings] = []
    monkeypatch.setattr(serve_cli, "run_server", served.append)
    done = runner.invoke(app, ["serve", str(bundle), "--verify", str(tmp_path / "k.pub")])
    assert done.exit_code == 0, done.output
    assert served[0].default_model == BASE and ModelStore(other.home).find(BASE) is not None
    again = runner.invoke(app, ["unpack", str(bundle)])
    assert again.exit_code == 0 and "nothing to do" in again.output

    name, offset = _member_offset(bundle, "config.json")
    with open(bundle, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"#")
    third = fresh("third-home")
    failed = _tailor(third.home, "unpack", str(bundle))
    assert failed.returncode == 1 and failed.stderr.startswith("error: refusing bundle")
    assert name in failed.stderr and len(failed.stderr.strip().splitlines()) == 1, failed.stderr
    assert "Traceback" not in failed.stderr
    missing = _tailor(third.home, "pack", "no-such-model")
    assert missing.returncode == 1 and missing.stderr.startswith("error: no-such-model is no model")
    assert len(missing.stderr.strip().splitlines()) == 1


def test_knowledge_base_records_are_checked_before_the_store_sees_them(source: Settings, fresh, tmp_path: Path,
                                                                        embeddings) -> None:
    """Records SQLite would take but the store could not read back (attributes that are not a JSON object, chunk
    ids at the int64 ceiling, a duplicated file) are refused by name, nothing is written, and listing still
    works; --force never replaces an unrelated base that happens to share the bundled base's id."""
    import numpy as np

    from tailorlm.bundle.knowledge import CHUNK_IDS, CHUNKS, KB_JSON, import_kb
    from tailorlm.kb import KnowledgeBases

    clean = _exported_handbook(source, tmp_path, embeddings)

    def tampered(name: str, edit) -> Path:
        folder = tmp_path / name
        shutil.copytree(clean, folder)
        edit(folder)
        return folder

    def head_edit(change):
        def edit(folder: Path) -> None:
            head = json.loads((folder / KB_JSON).read_text())
            change(head)
            (folder / KB_JSON).write_text(json.dumps(head))
        return edit

    def first_chunk(change):
        def edit(folder: Path) -> None:
            lines = (folder / CHUNKS).read_text().splitlines()
            record = json.loads(lines[0])
            change(record)
            (folder / CHUNKS).write_text("\n".join([json.dumps(record), *lines[1:]]) + "\n")
        return edit

    def huge_ids(folder: Path) -> None:
        ids = np.load(folder / CHUNK_IDS)
        np.save(folder / CHUNK_IDS, np.arange(2**63 - len(ids) - 1, 2**63 - 1, dtype=np.int64))

    cases = {
        "attributes": head_edit(lambda h: h["files"][0].update(attributes="[not json")),
        "metadata": head_edit(lambda h: h["kb"].update(metadata='"a string"')),
        "appears twice": head_edit(lambda h: h["files"].append(dict(h["files"][0]))),
        "status": head_edit(lambda h: h["files"][0].update(status="exploded")),
        "end_char": first_chunk(lambda r: r.update(start_char=10, end_char=3)),
        "chunk ids": huge_ids,
    }
    other = fresh()
    theirs = KnowledgeBases(other, embeddings=embeddings)
    for what, edit in cases.items():
        with pytest.raises(IntegrityError, match=what):
            import_kb(other, tampered(what.replace(" ", "-"), edit), "knowledge/handbook/kb.json", replace=True)
        assert theirs.list() == [] and theirs.conn.execute("SELECT count(*) FROM kb_chunks").fetchone()[0] == 0
    # an unrelated base here already has the bundled base's id: refused even with --force, and it survives
    bundled_id = json.loads((clean / KB_JSON).read_text())["kb"]["id"]
    theirs.create("unrelated")
    theirs.conn.execute("UPDATE kb SET id = ? WHERE name = 'unrelated'", (bundled_id,))
    with pytest.raises(IntegrityError, match="belongs to the knowledge base unrelated"):
        import_kb(other, clean, "knowledge/handbook/kb.json", replace=True)
    assert [kb.name for kb in theirs.list()] == ["unrelated"]
    assert import_kb(fresh("third-home"), clean, "knowledge/handbook/kb.json", replace=False) == "handbook"
