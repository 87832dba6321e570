"""Knowledge bases for the server: one KnowledgeBases, built on first use, and ingestion off the event loop.

An uploaded file added to a vector store is ingested by one background thread (writes go one at a time);
until it ends, the file reports `in_progress` from `pending`, then the knowledge base's own record. Each add is
also a row of `kb_ingest_queue` until the knowledge base records the file (its rows are written in one
transaction), so a server that stops, or dies, ingests at its next start what it had not finished: nothing
added is lost, and nothing is ingested twice.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tailorlm.config import Settings
from tailorlm.files import FileStore

if TYPE_CHECKING:
    from tailorlm.embeddings import EmbeddingModels

log = logging.getLogger("tailorlm.server")


@dataclass
class PendingFile:
    """A file being ingested (or whose ingestion failed before the knowledge base recorded it)."""

    id: str
    kb_id: str
    filename: str
    bytes: int
    created_at: int
    attributes: dict[str, Any] | None
    chunking: tuple[int, int] | None = None
    status: str = "in_progress"
    error: str | None = None
    cancelled: bool = False  # removed while being ingested: the ingestion must not write it


class Knowledge:
    def __init__(self, settings: Settings, files: FileStore, embeddings: EmbeddingModels | None = None) -> None:
        self.settings = settings
        self.files = files
        self.embeddings = embeddings  # the server's own models, so MiniLM is loaded once
        self._kbs: Any = None
        self._lock = threading.Lock()
        self.pending: dict[tuple[str, str], PendingFile] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._batches: Any = None
        self._stopping = False

    @property
    def batches(self) -> Any:
        """The file batches (tailorlm.kb.batches.FileBatches), opened on first use."""
        with self._lock:
            if self._batches is None:
                from tailorlm.kb.batches import FileBatches

                self._batches = FileBatches(self.settings)
            return self._batches

    @property
    def kbs(self) -> Any:
        """The KnowledgeBases (imported and opened on first use: a server that never uses them pays nothing)."""
        with self._lock:
            if self._kbs is None:
                from tailorlm.kb import KnowledgeBases

                self._kbs = KnowledgeBases(self.settings, embeddings=self.embeddings)
            return self._kbs

    def add_file(self, kb_id: str, file_id: str, attributes: dict[str, Any] | None,
                 chunking: tuple[int, int] | None = None) -> PendingFile:
        """Start ingesting uploaded file `file_id` into `kb_id`; returns its in-progress record at once."""
        record = self.files.get(file_id)  # 404 for an unknown file, before anything starts
        pending = PendingFile(record.id, kb_id, record.filename, record.bytes, int(time.time()), attributes, chunking)
        self.files.conn.execute(
            "INSERT OR REPLACE INTO kb_ingest_queue (kb_id, file_id, filename, bytes, created_at, attributes, chunking) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)", (kb_id, record.id, record.filename, record.bytes, pending.created_at,
                                            json.dumps(attributes), json.dumps(list(chunking)) if chunking else None))
        self._submit(pending)
        return pending

    def resume(self) -> int:
        """Queue again every file added and not ingested when the server last stopped; returns how many."""
        rows = self.files.conn.execute("SELECT * FROM kb_ingest_queue ORDER BY created_at, rowid").fetchall()
        for row in rows:
            attributes = json.loads(row["attributes"]) if row["attributes"] else None
            chunking = tuple(json.loads(row["chunking"])) if row["chunking"] else None
            self._submit(PendingFile(row["file_id"], row["kb_id"], row["filename"], row["bytes"], row["created_at"],
                                     attributes, chunking))  # type: ignore[arg-type]
        if rows:
            log.info("resuming the ingestion of %d file(s) added before the last stop", len(rows))
        return len(rows)

    def _done(self, pending: PendingFile) -> None:
        self.files.conn.execute("DELETE FROM kb_ingest_queue WHERE kb_id = ? AND file_id = ?",
                                (pending.kb_id, pending.id))

    def _submit(self, pending: PendingFile) -> None:
        with self._lock:
            self.pending[(pending.kb_id, pending.id)] = pending
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="kb-ingest")
        self._pool.submit(self._ingest, pending)

    def _ingest(self, pending: PendingFile) -> None:
        key = (pending.kb_id, pending.id)
        if pending.cancelled:  # cancelled while it waited its turn
            self._done(pending)
            return
        if self._recorded(pending):  # a resumed add whose ingestion had committed just before the stop
            self._done(pending)
            with self._lock:
                self.pending.pop(key, None)
            return
        try:
            with _named_copy(self.files.path(pending.id), pending.filename, self.settings.files_dir) as path:
                result = self.kbs.add_path(pending.kb_id, path, file_id=pending.id, attributes=pending.attributes,
                                           chunking=pending.chunking, cancelled=lambda: pending.cancelled)
            if result.status == "failed":
                pending.status, pending.error = "failed", result.error or "the file could not be ingested"
        except Exception as exc:  # reported on the file object, as OpenAI does
            log.warning("ingesting %s into %s failed: %s", pending.id, pending.kb_id, exc)
            pending.status, pending.error = "failed", getattr(exc, "message", None) or str(exc)
        if not self._stopping:  # a shutdown cut it short: it stays queued for the next start
            self._done(pending)
        with self._lock:
            if pending.cancelled:
                pending.status, pending.error = "cancelled", None
            elif pending.status != "failed":  # the knowledge base's record now speaks for it
                self.pending.pop(key, None)

    def _recorded(self, pending: PendingFile) -> bool:
        row = self.files.conn.execute("SELECT 1 FROM kb_files WHERE kb_id = ? AND id = ?",
                                      (pending.kb_id, pending.id)).fetchone()
        return row is not None

    def pending_for(self, kb_id: str) -> list[PendingFile]:
        with self._lock:
            return [p for (k, _), p in self.pending.items() if k == kb_id]

    def cancel(self, kb_id: str, file_ids: list[str]) -> None:
        """Stop ingesting these files (those not yet written): they end `cancelled`, with nothing indexed."""
        with self._lock:
            for file_id in file_ids:
                p = self.pending.get((kb_id, file_id))
                if p is not None and p.status == "in_progress":
                    p.cancelled, p.status = True, "cancelled"
                    self._done(p)

    def forget(self, kb_id: str, file_id: str | None = None) -> PendingFile | None:
        """Drop the pending record(s) of a removed file or knowledge base."""
        with self._lock:
            keys = [(kb_id, file_id)] if file_id is not None else [k for k in self.pending if k[0] == kb_id]
            dropped = [p for key in keys if (p := self.pending.pop(key, None)) is not None]
            for p in dropped:  # an ingestion still running checks this before it writes
                p.cancelled = True
                self._done(p)
            return dropped[0] if file_id is not None and dropped else None

    def close(self) -> None:
        """Let a running ingestion finish its transaction; files still waiting stay queued for the next start."""
        self._stopping = True
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


class _named_copy:
    """The blob `src` under its upload's filename (its extension says its format), as a hard link when possible."""

    def __init__(self, src: Path, filename: str, scratch_root: Path) -> None:
        self.src, self.filename, self.scratch_root = src, os.path.basename(filename) or "upload.txt", scratch_root

    def __enter__(self) -> Path:
        self.scratch_root.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix=".kb-", dir=self.scratch_root))
        path = self.dir / self.filename
        try:
            os.link(self.src, path)
        except OSError:
            shutil.copyfile(self.src, path)
        return path

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
