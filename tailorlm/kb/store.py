"""Knowledge bases (OpenAI's vector stores): named sets of files, chunked, embedded and indexed for
hybrid search. Rows, chunk text (FTS5) and vectors live in the SQLite store; each file is written in
one transaction, so a crash mid-ingestion leaves either the whole file or none of it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from tailorlm import db
from tailorlm.config import Settings, get_settings
from tailorlm.embeddings import EmbeddingModel, EmbeddingModels
from tailorlm.errors import AlreadyExistsError, InvalidRequestError, NotFoundError, TailorError
from tailorlm.kb import index
from tailorlm.kb.chunking import CHUNK_TOKENS, HEADING_TOKENS, OVERLAP, Chunk, chunk_blocks
from tailorlm.kb.extract import extract
from tailorlm.kb.filters import check_filter, matches
from tailorlm.store.names import validate_name

log = logging.getLogger("tailorlm.kb")

EMBED_BATCH = 64  # chunks per embed_ids call: one progress step
CANDIDATES = 50  # per method, before fusion
Progress = Callable[[int, int], None]  # (chunks embedded, chunks in the file)


@dataclass
class KnowledgeBase:
    id: str
    name: str
    created_at: int
    metadata: dict
    files: int
    chunks: int
    bytes: int
    embedding_model: str = ""
    expires_after: dict | None = None  # OpenAI's {"anchor": "last_active_at", "days": N}
    last_active_at: int | None = None

    @property
    def expires_at(self) -> int | None:
        if not self.expires_after:
            return None
        return (self.last_active_at or self.created_at) + int(self.expires_after["days"]) * 86400

    @property
    def expired(self) -> bool:
        return self.expires_at is not None and time.time() >= self.expires_at


@dataclass
class KbFile:
    id: str
    kb_id: str
    filename: str
    bytes: int
    sha256: str
    chunks: int
    status: Literal["completed", "failed", "cancelled"]
    error: str | None
    created_at: int
    attributes: dict
    chunking: tuple[int, int] | None = None  # (max tokens, overlap); None: the knowledge base's own


@dataclass
class IngestResult:
    file: KbFile
    status: Literal["added", "unchanged", "failed"]
    error: str | None


@dataclass
class Hit:
    chunk_id: str
    file_id: str
    filename: str
    text: str
    score: float
    position: int
    start: int
    end: int
    heading: str | None
    attributes: dict


class KnowledgeBases:
    """All knowledge bases of one store. Thread-safe; pass the server's `embeddings` to share its model."""

    def __init__(self, settings: Settings | None = None, *, embeddings: EmbeddingModels | None = None,
                 chunk_tokens: int = CHUNK_TOKENS, overlap: int = OVERLAP) -> None:
        self.settings = settings or get_settings()
        self.root = self.settings.home / "kb"
        self.conn = db.connect(self.settings.db_path)
        self.embeddings = embeddings or EmbeddingModels(self.settings.embedding_model)
        self.chunk_tokens, self.overlap = chunk_tokens, overlap
        self.cache = index.VectorCache(self.root)
        self._lock = threading.RLock()  # one writer transaction at a time on this connection

    # -- knowledge bases ------------------------------------------------------------------------
    def create(self, name: str, *, metadata: dict[str, str] | None = None,
               expires_after: dict | None = None) -> KnowledgeBase:
        name = validate_name(name, "knowledge base")
        kb_id = f"vs_{uuid.uuid4().hex}"
        expiry = _expires_after(expires_after)
        now = int(time.time())
        with self._write():
            if self._find(name) is not None:
                raise AlreadyExistsError(f"a knowledge base named {name!r} already exists", param="name")
            self.conn.execute("INSERT INTO kb (id, name, created_at, metadata, embedding_model, expires_after, "
                              "last_active_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                              (kb_id, name, now, json.dumps(_metadata(metadata)), self.settings.embedding_model,
                               json.dumps(expiry) if expiry else None, now))
        return self.get(kb_id)

    def get(self, name_or_id: str) -> KnowledgeBase:
        row = self._find(name_or_id)
        if row is None:
            raise NotFoundError(f"No knowledge base named or with id {name_or_id!r}; see `tailor kb list`.",
                                param="vector_store_id")
        return self._kb(row)

    def list(self) -> list[KnowledgeBase]:
        return [self._kb(r) for r in self._read(f"{_KB_SELECT} GROUP BY kb.id ORDER BY kb.created_at, kb.rowid")]

    def update(self, name_or_id: str, *, name: str | None = None, metadata: dict[str, str] | None = None,
               expires_after: dict | None = None) -> KnowledgeBase:
        kb = self.get(name_or_id)
        expiry = _expires_after(expires_after)
        with self._write():
            if expiry is not None:
                self.conn.execute("UPDATE kb SET expires_after = ? WHERE id = ?", (json.dumps(expiry), kb.id))
            if name is not None:
                name = validate_name(name, "knowledge base")
                other = self._find(name)
                if other is not None and other["id"] != kb.id:
                    raise AlreadyExistsError(f"a knowledge base named {name!r} already exists", param="name")
                self.conn.execute("UPDATE kb SET name = ? WHERE id = ?", (name, kb.id))
            if metadata is not None:
                self.conn.execute("UPDATE kb SET metadata = ? WHERE id = ?", (json.dumps(_metadata(metadata)), kb.id))
        return self.get(kb.id)

    def usable(self, name_or_id: str) -> KnowledgeBase:
        """The knowledge base, if it has not expired; using it moves its `last_active_at` to now."""
        kb = self.get(name_or_id)
        if kb.expired:
            raise InvalidRequestError(f"vector store {kb.id} expired (no use for {kb.expires_after['days']} days); "
                                      "create a new one", param="vector_store_id")
        now = int(time.time())
        if kb.last_active_at != now:
            with self._write():
                self.conn.execute("UPDATE kb SET last_active_at = ? WHERE id = ?", (now, kb.id))
            kb.last_active_at = now
        return kb

    def remove(self, name_or_id: str) -> None:
        kb = self.get(name_or_id)
        with self._write():
            self.conn.execute("DELETE FROM kb_fts WHERE rowid IN (SELECT id FROM kb_chunks WHERE kb_id = ?)", (kb.id,))
            self.conn.execute("DELETE FROM kb WHERE id = ?", (kb.id,))  # files and chunks cascade
        self.cache.drop(kb.id)

    # -- files ----------------------------------------------------------------------------------
    def files(self, name_or_id: str) -> list[KbFile]:
        kb = self.get(name_or_id)
        rows = self._read("SELECT * FROM kb_files WHERE kb_id = ? ORDER BY created_at, rowid", (kb.id,))
        return [_file(r) for r in rows]

    def get_file(self, name_or_id: str, file_id: str) -> KbFile:
        kb = self.get(name_or_id)
        row = next(iter(self._read("SELECT * FROM kb_files WHERE kb_id = ? AND id = ?", (kb.id, file_id))), None)
        if row is None:
            raise NotFoundError(f"No file {file_id!r} in knowledge base {kb.name!r}.", param="file_id")
        return _file(row)

    def file_text(self, name_or_id: str, file_id: str) -> list[str]:
        """The text of a file's chunks, in order (overlaps included)."""
        kb = self.get(name_or_id)
        self.get_file(kb.id, file_id)
        rows = self._read("SELECT t.text FROM kb_chunks c JOIN kb_fts t ON t.rowid = c.id "
                          "WHERE c.kb_id = ? AND c.file_id = ? ORDER BY c.position", (kb.id, file_id))
        return [r["text"] for r in rows]

    def remove_file(self, name_or_id: str, file_id: str) -> None:
        kb = self.get(name_or_id)
        self.get_file(kb.id, file_id)
        with self._write(kb.id):
            _delete_file(self.conn, kb.id, file_id)

    def add_paths(self, name_or_id: str, paths: list[Path], *, attributes: dict | None = None,
                  show_progress: bool = False) -> list[IngestResult]:
        """Add each file on its own: one that fails is reported in its result and the others go on."""
        kb = self.get(name_or_id)
        results: list[IngestResult] = []
        with _progress_bar(show_progress, len(paths)) as bar:
            for path in paths:
                results.append(self.add_path(kb.id, Path(path), attributes=attributes, progress=bar.start(Path(path))))
                bar.done()
        return results

    def add_path(self, name_or_id: str, path: Path, *, file_id: str | None = None, attributes: dict | None = None,
                 progress: Progress | None = None, chunking: tuple[int, int] | None = None,
                 cancelled: Callable[[], bool] | None = None) -> IngestResult:
        """Extract, chunk, embed and index one file. The same bytes under the same name are a no-op;
        other bytes under a name already present (or `file_id`) replace that file once they are indexed.

        `chunking` is (max tokens, overlap) for this file instead of the base's own; `cancelled` is asked inside
        the write transaction, so a file removed while it was being embedded is never written."""
        kb = self.get(name_or_id)
        path = Path(path)
        attrs = _attributes(attributes)
        existing = self._existing(kb.id, path.name, file_id)
        file = KbFile(existing.id if existing else file_id or f"file-{uuid.uuid4().hex[:24]}", kb.id, path.name,
                      0, "", 0, "completed", None, int(time.time()), attrs, chunking)
        try:
            with open(path, "rb") as fh:  # streamed: a large PDF is hashed without holding it in memory
                file.sha256 = hashlib.file_digest(fh, "sha256").hexdigest()
                file.bytes = fh.tell()
            if existing and existing.status == "completed" and existing.sha256 == file.sha256 \
                    and existing.filename == file.filename and existing.chunking == file.chunking:
                if attributes is not None and attrs != existing.attributes:
                    with self._write():
                        self.conn.execute("UPDATE kb_files SET attributes = ? WHERE kb_id = ? AND id = ?",
                                          (json.dumps(attrs), kb.id, existing.id))
                    existing.attributes = attrs
                return IngestResult(existing, "unchanged", None)
            if attributes is None and existing:
                file.attributes = existing.attributes
            model = self._model(kb)
            max_tokens, overlap = self._chunking(model, chunking)
            _, chunks = chunk_blocks(extract(path), model.tokenizer, max_tokens=max_tokens, overlap=overlap)
            vectors = _embed_chunks(model, chunks, progress)
            file.chunks = len(chunks)
            with self._write(kb.id):
                if cancelled is not None and cancelled():
                    file.status, file.error = "cancelled", "removed before it was indexed"
                    return IngestResult(file, "failed", file.error)
                _delete_file(self.conn, kb.id, file.id)
                _insert_file(self.conn, file)
                _insert_chunks(self.conn, file, chunks, vectors)
            return IngestResult(file, "added", None)
        except Exception as exc:  # noqa: BLE001 — a file's failure is its result; the caller's batch goes on
            message = exc.message if isinstance(exc, TailorError) else f"{path.name}: {type(exc).__name__}: {exc}"
            if not isinstance(exc, TailorError):
                log.warning("indexing %s failed", path, exc_info=True)
            file.status, file.error, file.chunks = "failed", message, 0
            if cancelled is not None and cancelled():
                file.status = "cancelled"
            elif existing is None or existing.status == "failed":  # a good earlier version stays searchable
                with self._write(kb.id):
                    _delete_file(self.conn, kb.id, file.id)
                    _insert_file(self.conn, file)
            return IngestResult(file, "failed", message)

    # -- search ---------------------------------------------------------------------------------
    def search(self, name_or_id: str, query: str, *, k: int = 5,
               mode: Literal["hybrid", "vector", "keyword"] = "hybrid", filters: dict | None = None) -> list[Hit]:
        """The `k` best chunks: by cosine similarity, BM25, or both fused by reciprocal rank."""
        kb = self.get(name_or_id)
        if not query or not query.strip():
            raise InvalidRequestError("query must not be empty.", param="query")
        if mode not in ("hybrid", "vector", "keyword"):
            raise InvalidRequestError(f"invalid mode {mode!r}: use hybrid, vector or keyword", param="mode")
        if k < 1:
            raise InvalidRequestError("k must be at least 1.", param="k")
        allowed = self._allowed(kb.id, check_filter(filters)) if filters else None
        if allowed is not None and not allowed:
            return []
        pool = max(k, CANDIDATES) if mode == "hybrid" else k
        ranked: list[list[tuple[int, float]]] = []
        if mode != "keyword":
            model = self._model(kb)
            query_vector = _embed_query(model, query)
            with self._lock:
                vectors = self.cache.get(self.conn, kb.id, model.dim)
            ranked.append(index.vector_search(vectors, query_vector, pool, allowed))
        if mode != "vector":
            with self._lock:
                ranked.append(index.keyword_search(self.conn, kb.id, query, pool, allowed))
        best = index.fuse(*ranked)[:k] if mode == "hybrid" else ranked[0][:k]
        return self._hits(best)

    # -- internals ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _write(self, kb_id: str | None = None) -> Iterator[None]:
        """One IMMEDIATE transaction; with `kb_id`, the base's version moves so that caches refresh."""
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield
                if kb_id is not None:
                    self.conn.execute("UPDATE kb SET version = version + 1 WHERE id = ?", (kb_id,))
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise

    def _read(self, sql: str, args: tuple = ()) -> list:
        """Reads take the lock too: on this shared connection they would otherwise see another thread's
        uncommitted transaction."""
        with self._lock:
            return self.conn.execute(sql, args).fetchall()

    def _find(self, name_or_id: str):
        key = name_or_id.strip()
        rows = self._read(f"{_KB_SELECT} WHERE kb.id = ? OR kb.name = ? GROUP BY kb.id", (key, key.lower()))
        return rows[0] if rows else None

    @staticmethod
    def _kb(row) -> KnowledgeBase:
        return KnowledgeBase(row["id"], row["name"], row["created_at"], json.loads(row["metadata"]), row["n_files"],
                             row["n_chunks"], row["n_bytes"], row["embedding_model"],
                             json.loads(row["expires_after"]) if row["expires_after"] else None,
                             row["last_active_at"])

    def _existing(self, kb_id: str, filename: str, file_id: str | None) -> KbFile | None:
        if file_id is not None:
            rows = self._read("SELECT * FROM kb_files WHERE kb_id = ? AND id = ?", (kb_id, file_id))
        else:
            rows = self._read("SELECT * FROM kb_files WHERE kb_id = ? AND filename = ? "
                              "ORDER BY created_at DESC, rowid DESC LIMIT 1", (kb_id, filename))
        return _file(rows[0]) if rows else None

    def _model(self, kb: KnowledgeBase) -> EmbeddingModel:
        return self.embeddings.get(kb.embedding_model or self.settings.embedding_model).model

    def _chunk_tokens(self, model: EmbeddingModel) -> int:
        return min(self.chunk_tokens, self.max_chunk_tokens(model))

    @staticmethod
    def max_chunk_tokens(model: EmbeddingModel) -> int:
        """The longest chunk `model` embeds whole, with its heading in front."""
        return model.max_length - HEADING_TOKENS - len(model.prefix) - len(model.suffix)

    def check_chunking(self, name_or_id: str | None, chunking: tuple[int, int]) -> None:
        """Raise InvalidRequestError unless the knowledge base's embedding model can embed such chunks whole."""
        model_name = self.get(name_or_id).embedding_model if name_or_id else ""
        self._chunking(self.embeddings.get(model_name or self.settings.embedding_model).model, chunking)

    def _chunking(self, model: EmbeddingModel, chunking: tuple[int, int] | None) -> tuple[int, int]:
        """(max tokens, overlap) for one file: the base's own, or a caller's that the model can embed whole."""
        if chunking is None:
            return self._chunk_tokens(model), self.overlap
        size, overlap = chunking
        limit = self.max_chunk_tokens(model)
        if not 1 <= size <= limit:
            raise InvalidRequestError(f"chunks of {size} tokens do not fit the embedding model, which embeds at "
                                      f"most {limit} tokens per chunk; use a max_chunk_size_tokens up to {limit}.",
                                      param="chunking_strategy")
        if not 0 <= overlap <= size // 2:
            raise InvalidRequestError(f"chunk_overlap_tokens must be between 0 and half of max_chunk_size_tokens "
                                      f"({size // 2}), got {overlap}.", param="chunking_strategy")
        return size, overlap

    def _allowed(self, kb_id: str, filters: dict) -> set[str]:
        rows = self._read("SELECT id, filename, attributes FROM kb_files WHERE kb_id = ? AND status = ?",
                          (kb_id, "completed"))
        return {r["id"] for r in rows if matches(filters, {**json.loads(r["attributes"]), "filename": r["filename"]})}

    def _hits(self, ranked: list[tuple[int, float]]) -> list[Hit]:
        if not ranked:
            return []
        rows = self._read(
            "SELECT c.id, c.file_id, c.position, c.start_char, c.end_char, c.heading, t.text, f.filename, "
            "f.attributes FROM kb_chunks c JOIN kb_fts t ON t.rowid = c.id "
            "JOIN kb_files f ON f.kb_id = c.kb_id AND f.id = c.file_id "
            "WHERE c.id IN (SELECT value FROM json_each(?))", (json.dumps([r for r, _ in ranked]),))
        by_id = {r["id"]: r for r in rows}
        return [Hit(f"chunk_{rowid}", r["file_id"], r["filename"], r["text"], score, r["position"], r["start_char"],
                    r["end_char"], r["heading"], json.loads(r["attributes"]))
                for rowid, score in ranked if (r := by_id.get(rowid)) is not None]


_KB_SELECT = ("SELECT kb.*, count(f.id) AS n_files, coalesce(sum(f.chunks), 0) AS n_chunks, "
              "coalesce(sum(CASE WHEN f.status = 'completed' THEN f.bytes END), 0) AS n_bytes "
              "FROM kb LEFT JOIN kb_files f ON f.kb_id = kb.id")


def _file(row) -> KbFile:
    chunking = tuple(json.loads(row["chunking"])) if row["chunking"] else None
    return KbFile(row["id"], row["kb_id"], row["filename"], row["bytes"], row["sha256"], row["chunks"], row["status"],
                  row["error"], row["created_at"], json.loads(row["attributes"]), chunking)  # type: ignore[arg-type]


def _delete_file(conn, kb_id: str, file_id: str) -> None:
    conn.execute("DELETE FROM kb_fts WHERE rowid IN (SELECT id FROM kb_chunks WHERE kb_id = ? AND file_id = ?)",
                 (kb_id, file_id))
    conn.execute("DELETE FROM kb_files WHERE kb_id = ? AND id = ?", (kb_id, file_id))  # chunks cascade


def _insert_file(conn, f: KbFile) -> None:
    conn.execute("INSERT INTO kb_files (kb_id, id, filename, bytes, sha256, chunks, status, error, created_at, "
                 "attributes, chunking) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 (f.kb_id, f.id, f.filename, f.bytes, f.sha256, f.chunks, f.status, f.error, f.created_at,
                  json.dumps(f.attributes), json.dumps(list(f.chunking)) if f.chunking else None))


def _insert_chunks(conn, f: KbFile, chunks: list[Chunk], vectors: np.ndarray) -> None:
    for chunk, vector in zip(chunks, vectors):
        rowid = conn.execute(
            "INSERT INTO kb_chunks (kb_id, file_id, position, start_char, end_char, heading, vector) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (f.kb_id, f.id, chunk.position, chunk.start, chunk.end, chunk.heading,
             np.ascontiguousarray(vector, dtype=np.float32).tobytes())).lastrowid
        conn.execute("INSERT INTO kb_fts (rowid, text, heading, kb_id) VALUES (?, ?, ?, ?)",
                     (rowid, chunk.text, chunk.heading or "", f.kb_id))


def _embed_chunks(model: EmbeddingModel, chunks: list[Chunk], progress: Progress | None) -> np.ndarray:
    """Each chunk embedded with its heading in front, EMBED_BATCH chunks per forward pass."""
    headings: dict[str | None, list[int]] = {None: []}
    seqs = []
    for c in chunks:
        if c.heading not in headings:
            headings[c.heading] = model.tokenizer(c.heading, add_special_tokens=False)["input_ids"][:HEADING_TOKENS]
        seqs.append(model.prefix + headings[c.heading] + c.ids + model.suffix)
    out = np.empty((len(seqs), model.dim), np.float32)
    for start in range(0, len(seqs), EMBED_BATCH):
        out[start:start + EMBED_BATCH] = model.embed_ids(seqs[start:start + EMBED_BATCH])
        if progress:
            progress(min(start + EMBED_BATCH, len(seqs)), len(seqs))
    return out


def _embed_query(model: EmbeddingModel, query: str) -> np.ndarray:
    """A long query is cut to what the model embeds, rather than refused."""
    ids = model.tokenizer(query, add_special_tokens=False, verbose=False)["input_ids"]
    ids = ids[:model.max_length - len(model.prefix) - len(model.suffix)]
    return model.embed_ids([model.prefix + ids + model.suffix])[0]


def _metadata(metadata: dict | None) -> dict[str, str]:
    """OpenAI's limits: at most 16 pairs, keys up to 64 characters, string values up to 512."""
    metadata = metadata or {}
    if not isinstance(metadata, dict) or len(metadata) > 16 or any(
            not isinstance(k, str) or not isinstance(v, str) or len(k) > 64 or len(v) > 512
            for k, v in metadata.items()):
        raise InvalidRequestError("metadata: at most 16 string pairs, keys up to 64 and values up to 512 "
                                  "characters.", param="metadata")
    return dict(metadata)


def _expires_after(expires_after: dict | None) -> dict | None:
    """OpenAI's expiration policy: anchor `last_active_at`, 1 to 365 days."""
    if expires_after is None:
        return None
    days = expires_after.get("days") if isinstance(expires_after, dict) else None
    if not isinstance(expires_after, dict) or expires_after.get("anchor") != "last_active_at" \
            or not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= 365:
        raise InvalidRequestError('expires_after must be {"anchor": "last_active_at", "days": N} with N from 1 '
                                  "to 365.", param="expires_after")
    return {"anchor": "last_active_at", "days": days}


def _attributes(attributes: dict | None) -> dict:
    """OpenAI's limits: at most 16 keys up to 64 characters; values strings (up to 512), numbers or booleans."""
    attributes = attributes or {}
    if not isinstance(attributes, dict) or len(attributes) > 16 or any(
            not isinstance(k, str) or len(k) > 64 or not isinstance(v, str | int | float | bool)
            or (isinstance(v, str) and len(v) > 512) for k, v in attributes.items()):
        raise InvalidRequestError("attributes: at most 16 keys up to 64 characters, with string (up to 512), "
                                  "number or boolean values.", param="attributes")
    return dict(attributes)


class _Bar:
    """A rich bar over the files of one `add_paths` call, with the current file's chunks."""

    def __init__(self, progress, total: int) -> None:
        self.progress = progress
        self.files = progress.add_task("files", total=total) if progress else None
        self.chunks = None  # the current file's task

    def start(self, path: Path) -> Progress | None:
        """A bar for one file's chunks, shown while it is embedded."""
        if not self.progress:
            return None
        self.chunks = self.progress.add_task(f"  {path.name}", total=None)
        return lambda done, total: self.progress.update(self.chunks, completed=done, total=total)

    def done(self) -> None:
        if self.progress:
            self.progress.remove_task(self.chunks)
            self.progress.advance(self.files)


@contextlib.contextmanager
def _progress_bar(enabled: bool, total: int) -> Iterator[_Bar]:
    if not enabled:
        yield _Bar(None, total)
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress as Rich, TextColumn, TimeElapsedColumn

    with Rich(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
              console=Console(stderr=True), transient=False) as progress:
        yield _Bar(progress, total)
