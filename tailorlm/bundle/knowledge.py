"""A knowledge base as portable files (rows as JSON lines, vectors and chunk ids as .npy), and back into a
store in ONE SQLite transaction, so a failed import leaves nothing. Columns are copied by name, so a column a
later migration adds travels too; `version` and `last_active_at` are the receiving store's own."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np

from tailorlm import db
from tailorlm.config import Settings
from tailorlm.bundle import kb_records as records
from tailorlm.errors import AlreadyExistsError, IntegrityError, NotFoundError
from tailorlm.kb.index import VectorCache
from tailorlm.store.names import validate_name

KB_JSON, CHUNKS, VECTORS, CHUNK_IDS = "kb.json", "chunks.jsonl", "vectors.npy", "chunk_ids.npy"
CONTENT = (KB_JSON, CHUNKS, VECTORS)  # what makes two exports the same base (chunk ids are only kept if free)
EXPORT_FORMAT = 1
_LOCAL = {"version", "last_active_at"}


def export_kb(settings: Settings, name: str, folder: Path) -> str:
    """Write knowledge base `name` into `folder` from one consistent snapshot; returns its name."""
    conn = db.connect(settings.db_path)
    try:
        conn.execute("BEGIN")
        kb = conn.execute("SELECT * FROM kb WHERE name = ? OR id = ?", (name.strip().lower(), name.strip())).fetchone()
        if kb is None:
            raise NotFoundError(f"knowledge base {name} does not exist; see `tailor kb list`", param="knowledge")
        files = [{k: r[k] for k in r.keys() if k != "kb_id"} for r in conn.execute(
            "SELECT * FROM kb_files WHERE kb_id = ? ORDER BY created_at, rowid", (kb["id"],))]
        count = conn.execute("SELECT count(*) FROM kb_chunks WHERE kb_id = ?", (kb["id"],)).fetchone()[0]
        first = conn.execute("SELECT vector FROM kb_chunks WHERE kb_id = ? LIMIT 1", (kb["id"],)).fetchone()
        dim = len(first[0]) // 4 if first else 0
        head = {"format": EXPORT_FORMAT, "kb": {k: kb[k] for k in kb.keys() if k not in _LOCAL},
                "files": files, "chunks": count, "dim": dim}
        (folder / KB_JSON).write_text(json.dumps(head, sort_keys=True, indent=1, ensure_ascii=False))
        rows = conn.execute("SELECT c.*, t.text FROM kb_chunks c JOIN kb_fts t ON t.rowid = c.id "
                            "WHERE c.kb_id = ? ORDER BY c.id", (kb["id"],))
        _write_chunks(folder, rows, count, dim)
        return str(kb["name"])
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")
        conn.close()


def _write_chunks(folder: Path, rows: sqlite3.Cursor, count: int, dim: int) -> None:
    """Chunks streamed row by row: text to JSON lines, vectors and ids into memory-mapped .npy files."""
    if count == 0:
        np.save(folder / VECTORS, np.zeros((0, dim), np.float32))
        np.save(folder / CHUNK_IDS, np.zeros((0,), np.int64))
        (folder / CHUNKS).write_text("")
        return
    vectors = np.lib.format.open_memmap(folder / VECTORS, mode="w+", dtype=np.float32, shape=(count, dim))
    ids = np.lib.format.open_memmap(folder / CHUNK_IDS, mode="w+", dtype=np.int64, shape=(count,))
    written = 0
    with open(folder / CHUNKS, "w", encoding="utf-8") as fh:
        for i, row in enumerate(rows):
            if i >= count or len(row["vector"]) != dim * 4:
                raise IntegrityError("the knowledge base changed or holds vectors of mixed sizes while exported")
            ids[i], vectors[i] = row["id"], np.frombuffer(row["vector"], np.float32)
            record = {k: row[k] for k in row.keys() if k not in ("id", "kb_id", "vector")}
            fh.write(json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n")
            written += 1
    if written != count:
        raise IntegrityError(f"the knowledge base lists {count} chunks but {written} have text")
    vectors.flush()
    ids.flush()
    del vectors, ids


def read_head(folder: Path, member: str) -> dict[str, Any]:
    """kb.json, checked enough that an import can trust its shape; IntegrityError names `member`."""
    try:
        head = json.loads((folder / KB_JSON).read_text(encoding="utf-8"))
        assert head["format"] == EXPORT_FORMAT and isinstance(head["kb"], dict) and isinstance(head["files"], list)
        validate_name(head["kb"]["name"], "knowledge base")
        assert isinstance(head["kb"]["id"], str) and int(head["chunks"]) >= 0 and int(head["dim"]) >= 0
    except (OSError, ValueError, KeyError, TypeError, AssertionError) as exc:
        raise IntegrityError(f"{member} is not a knowledge base export this tailorlm reads ({exc!r})") from None
    return head


def import_kb(settings: Settings, folder: Path, member: str, *, replace: bool) -> str:
    """Add the exported base in `folder` (replacing one of the same name or id only if `replace`); returns its name."""
    head = read_head(folder, member)
    kb, name, n = dict(head["kb"]), head["kb"]["name"], int(head["chunks"])
    try:
        vectors = np.load(folder / VECTORS, mmap_mode="r", allow_pickle=False) if n else np.zeros((0, head["dim"]))
        ids = np.load(folder / CHUNK_IDS, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise IntegrityError(f"the vectors of {member} cannot be read: {exc}") from None
    if vectors.shape != (n, head["dim"]) or ids.shape != (n,) or (n and vectors.dtype != np.float32):
        raise IntegrityError(f"the vectors of {member} do not match its {n} chunks")
    records.check_kb(kb, member)
    file_ids = records.check_files(head["files"], member)
    records.check_chunk_ids(ids.tolist(), member)
    conn = db.connect(settings.db_path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            old = conn.execute("SELECT id, name FROM kb WHERE name = ? OR id = ?", (name, kb["id"])).fetchall()
            taken = [row["name"] for row in old if row["name"] != name]
            if taken:  # --force replaces a base of the same name, never an unrelated one that shares the id
                raise IntegrityError(f"{member} cannot be imported: its id {kb['id']} belongs to the knowledge base "
                                     f"{taken[0]} here; remove that base first")
            if old and not replace:
                raise AlreadyExistsError(f"knowledge base {name} is already in the store and differs from the "
                                         "bundled one; use --force to replace it")
            for row in old:
                conn.execute("DELETE FROM kb_fts WHERE rowid IN (SELECT id FROM kb_chunks WHERE kb_id = ?)", (row[0],))
                conn.execute("DELETE FROM kb WHERE id = ?", (row[0],))  # files and chunks cascade
            # A new version tells every vector cache (in this or a running server process) to reload.
            _insert(conn, "kb", {**kb, "version": time.time_ns(), "last_active_at": int(time.time())})
            for file in head["files"]:
                _insert(conn, "kb_files", {**file, "kb_id": kb["id"]})
            _insert_chunks(conn, folder, member, kb["id"], ids, vectors, file_ids)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        raise IntegrityError(f"{member} cannot be imported: {exc}") from None
    finally:
        conn.close()
    VectorCache(settings.home / "kb").drop(kb["id"])  # a sidecar left by a replaced base is stale
    return name


def _insert_chunks(conn: sqlite3.Connection, folder: Path, member: str, kb_id: str, ids: np.ndarray,
                   vectors: np.ndarray, file_ids: set[str]) -> None:
    """Chunk ids are kept when the store never used them (ids are never reused, so caches can trust them)."""
    used = conn.execute("SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'kb_chunks'), 0), "
                        "coalesce((SELECT max(id) FROM kb_chunks), 0))").fetchone()[0]
    keep = bool(len(ids)) and int(ids.min()) > used and len(set(ids.tolist())) == len(ids)
    count = 0
    with open(folder / CHUNKS, encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i >= len(ids):
                raise sqlite3.DataError(f"more chunks than the {len(ids)} vectors")
            try:
                record = records.check_chunk(json.loads(line), i, file_ids, member)
            except ValueError:
                raise IntegrityError(f"{member} cannot be imported: chunk {i} is not JSON") from None
            text, heading = record.pop("text"), record.get("heading")
            row = {**record, "kb_id": kb_id, "vector": np.ascontiguousarray(vectors[i], np.float32).tobytes()}
            if keep:
                row["id"] = int(ids[i])
            rowid = _insert(conn, "kb_chunks", row)
            conn.execute("INSERT INTO kb_fts (rowid, text, heading, kb_id) VALUES (?, ?, ?, ?)",
                         (rowid, text, heading or "", kb_id))
            count += 1
    if count != len(ids):
        raise sqlite3.DataError(f"{count} chunks for {len(ids)} vectors")


def _insert(conn: sqlite3.Connection, table: str, row: dict[str, Any]) -> int:
    """INSERT the columns of `row` that `table` has (a column from a newer tailorlm is dropped)."""
    columns = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
    names = [c for c in columns if c in row]
    sql = f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})"
    return int(conn.execute(sql, [row[c] for c in names]).lastrowid)
