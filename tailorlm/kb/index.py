"""Search over a knowledge base's chunks: exact vector search over a cached matrix, BM25 through
SQLite FTS5, and reciprocal rank fusion of the two. SQLite is the source of truth; the matrix is a
derived cache per knowledge base, extended with new rows or rebuilt when the base's `version` moves."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SIDECAR_MIN_ROWS = 10_000  # rows read from SQLite (or dropped) in one refresh before the sidecar is rewritten
RRF_K = 60  # the constant of Cormack et al. (2009); damps the weight of the very first ranks


@dataclass
class Vectors:
    """One knowledge base's vectors as of `version`: row i is chunk `rowids[i]` of file `file_ids[files[i]]`."""

    version: int
    rowids: np.ndarray  # int64 [n]
    files: np.ndarray  # int32 [n], codes into file_ids
    file_ids: list[str]
    matrix: np.ndarray  # float32 [n, dim], unit rows


class VectorCache:
    """Vectors per knowledge base, loaded on first search and kept in step with SQLite: rows newer than those
    cached are read, deleted ones dropped. With `root`, a sidecar file (`<root>/<kb id>/vectors.npz`) saves a
    process start from reading every BLOB again; it is only a cache, rewritten after large refreshes."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root
        self._by_kb: dict[str, Vectors] = {}
        self._lock = threading.Lock()

    def drop(self, kb_id: str) -> None:
        with self._lock:
            self._by_kb.pop(kb_id, None)
            if self.root is not None:
                shutil.rmtree(self.root / kb_id, ignore_errors=True)

    def get(self, conn: sqlite3.Connection, kb_id: str, dim: int) -> Vectors:
        """The base's vectors as of now, read in one snapshot."""
        with self._lock:
            conn.execute("BEGIN")
            try:
                row = conn.execute(
                    "SELECT version, (SELECT count(*) FROM kb_chunks WHERE kb_id = ?) FROM kb WHERE id = ?",
                    (kb_id, kb_id)).fetchone()
                if row is None:  # removed meanwhile (by another process): nothing to search
                    return _empty(-1, dim)
                version, count = row
                cached = self._by_kb.get(kb_id) or self._load(kb_id, dim) or _empty(-1, dim)
                if cached.version == version:
                    self._by_kb[kb_id] = cached
                    return cached
                after = int(cached.rowids[-1]) if cached.rowids.size else -1
                new = conn.execute("SELECT id, file_id, vector FROM kb_chunks WHERE kb_id = ? AND id > ? ORDER BY id",
                                   (kb_id, after)).fetchall()
                dropped = cached.rowids.size + len(new) - count
                if dropped:  # rows were deleted since: keep those still there
                    live = np.fromiter((r[0] for r in conn.execute(
                        "SELECT id FROM kb_chunks WHERE kb_id = ? AND id <= ?", (kb_id, after))), np.int64)
                    keep = np.isin(cached.rowids, live)
                    cached = Vectors(cached.version, cached.rowids[keep], cached.files[keep], cached.file_ids,
                                     cached.matrix[keep])
            finally:
                conn.execute("COMMIT")
            self._by_kb[kb_id] = vectors = _extend(cached, version, new, dim)
            if len(new) + abs(dropped) >= SIDECAR_MIN_ROWS:
                self._save(kb_id, vectors)
            return vectors

    def _load(self, kb_id: str, dim: int) -> Vectors | None:
        path = self.root / kb_id / "vectors.npz" if self.root is not None else None
        if path is None or not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                vectors = Vectors(int(z["version"]), z["rowids"], z["files"], [str(f) for f in z["file_ids"]],
                                  z["matrix"])
        except (OSError, ValueError, KeyError):  # damaged or from another layout: it is only a cache
            return None
        return vectors if vectors.matrix.ndim == 2 and vectors.matrix.shape[1] == dim else None

    def _save(self, kb_id: str, vectors: Vectors) -> None:
        """Written to a temporary name, fsynced and renamed: a reader never sees half a file."""
        folder = self.root / kb_id if self.root is not None else None
        if folder is None:
            return
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".vectors-{uuid.uuid4().hex}.npz"
        try:
            with open(tmp, "wb") as fh:
                np.savez(fh, version=vectors.version, rowids=vectors.rowids, files=vectors.files,
                         file_ids=np.array(vectors.file_ids, dtype=str), matrix=vectors.matrix)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, folder / "vectors.npz")
        finally:
            tmp.unlink(missing_ok=True)


def _empty(version: int, dim: int) -> Vectors:
    return Vectors(version, np.empty(0, np.int64), np.empty(0, np.int32), [], np.empty((0, dim), np.float32))


def _extend(old: Vectors, version: int, rows: list, dim: int) -> Vectors:
    file_ids = list(old.file_ids)
    codes = {f: i for i, f in enumerate(file_ids)}
    new_files = np.empty(len(rows), np.int32)
    for i, row in enumerate(rows):
        code = codes.get(row[1])
        if code is None:
            code = codes[row[1]] = len(file_ids)
            file_ids.append(row[1])
        new_files[i] = code
    matrix = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.float32).reshape(len(rows), dim)
    return Vectors(version, np.concatenate([old.rowids, np.array([r[0] for r in rows], np.int64)]),
                   np.concatenate([old.files, new_files]), file_ids, np.concatenate([old.matrix, matrix]))


def vector_search(vectors: Vectors, query: np.ndarray, n: int,
                  allowed: set[str] | None = None) -> list[tuple[int, float]]:
    """(rowid, cosine) of the `n` nearest chunks, among the files in `allowed` when given."""
    if not vectors.rowids.size:
        return []
    scores = vectors.matrix @ query  # [n_chunks]
    if allowed is not None:
        keep = np.array([f in allowed for f in vectors.file_ids], dtype=bool)
        scores = np.where(keep[vectors.files], scores, -np.inf)
    n = min(n, scores.size)
    top = np.argpartition(-scores, n - 1)[:n]
    top = top[np.argsort(-scores[top], kind="stable")]
    return [(int(vectors.rowids[i]), float(scores[i])) for i in top if np.isfinite(scores[i])]


# English function words: in a small collection a match on "is" alone outranks the vectors' best in the fusion.
STOPWORDS = frozenset(
    "a an and are as at be by can do does for from has have how i in is it its my of on or our so that the their "
    "there this to was we what when where which who why will with you your".split())


def fts_query(text: str) -> str:
    """Any of the query's words but function words (all, if that is all there is), each quoted so that
    FTS5 syntax in user text is never interpreted."""
    words = list(dict.fromkeys(re.findall(r"\w+", text.lower())))
    content = [w for w in words if w not in STOPWORDS] or words
    return " OR ".join(f'"{w}"' for w in content)


# A query word found in more chunks than this carries little BM25 weight but makes FTS5's OR query walk its
# whole posting list (at 1M chunks, a second per query): it is left out while rarer words remain.
COMMON_MIN_DOCS, COMMON_FRACTION = 2000, 0.05


def _rare_words(conn: sqlite3.Connection, words: list[str]) -> list[str]:
    """`words` without the very common ones (document frequency from FTS5's own vocabulary), never none."""
    conn.execute("CREATE VIRTUAL TABLE IF NOT EXISTS temp.kb_fts_vocab USING fts5vocab(main, kb_fts, 'row')")
    total = conn.execute("SELECT COALESCE(MAX(id), 0) FROM kb_chunks").fetchone()[0]
    cutoff = max(COMMON_MIN_DOCS, COMMON_FRACTION * total)
    if total <= cutoff:
        return words
    marks = ",".join("?" * len(words))
    docs = dict(conn.execute(f"SELECT term, doc FROM temp.kb_fts_vocab WHERE term IN ({marks})", words).fetchall())
    rare = [w for w in words if docs.get(w, 0) <= cutoff]
    return rare or sorted(words, key=lambda w: docs.get(w, 0))[:1]


def keyword_search(conn: sqlite3.Connection, kb_id: str, query: str, n: int,
                   allowed: set[str] | None = None) -> list[tuple[int, float]]:
    """(rowid, BM25 score, higher is better) of the `n` best keyword matches."""
    words = list(dict.fromkeys(re.findall(r"\w+", query.lower())))
    content = [w for w in words if w not in STOPWORDS] or words
    match = fts_query(" ".join(_rare_words(conn, content))) if content else ""
    if not match:
        return []
    if allowed is None:
        sql = ("SELECT rowid, -bm25(kb_fts, 1.0, 0.5) FROM kb_fts WHERE kb_fts MATCH ? AND kb_id = ? "
               "ORDER BY bm25(kb_fts, 1.0, 0.5) LIMIT ?")
        args: tuple = (match, kb_id, n)
    else:
        sql = ("SELECT kb_fts.rowid, -bm25(kb_fts, 1.0, 0.5) FROM kb_fts JOIN kb_chunks c ON c.id = kb_fts.rowid "
               "WHERE kb_fts MATCH ? AND kb_fts.kb_id = ? AND c.file_id IN (SELECT value FROM json_each(?)) "
               "ORDER BY bm25(kb_fts, 1.0, 0.5) LIMIT ?")
        args = (match, kb_id, json.dumps(sorted(allowed)), n)
    return [(int(r[0]), float(r[1])) for r in conn.execute(sql, args)]


def fuse(*ranked: list[tuple[int, float]], k: int = RRF_K) -> list[tuple[int, float]]:
    """Reciprocal rank fusion, scaled so that first in every list scores 1.0."""
    scores: dict[int, float] = {}
    for ranking in ranked:
        for rank, (rowid, _) in enumerate(ranking):
            scores[rowid] = scores.get(rowid, 0.0) + 1.0 / (k + rank + 1)
    best = len(ranked) / (k + 1)
    return sorted(((r, s / best) for r, s in scores.items()), key=lambda x: -x[1])
