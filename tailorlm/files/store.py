"""Uploaded files (OpenAI's Files API): rows in SQLite, contents stored once per sha256 under HOME/files.

A file's content is written to a temporary name, hashed while it streams, and renamed into
`blobs/<sha256>` only when complete, so a crash never leaves a half file under a real name.
Two uploads of the same bytes share one blob; deleting the last row that names it removes it.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

from tailorlm.errors import IntegrityError, InvalidRequestError, NotFoundError, PayloadTooLargeError

PURPOSES = ("fine-tune", "fine-tune-results", "assistants", "batch", "user_data", "evals", "vision")
CHUNK = 1024 * 1024


@dataclass
class StoredFile:
    """One uploaded file, shaped like OpenAI's `OpenAIFile`."""

    id: str
    filename: str
    purpose: str
    bytes: int
    sha256: str
    created_at: int

    def to_openai(self) -> dict:
        out = asdict(self)
        out.pop("sha256")
        out.update(object="file", status="processed")
        return out


class FileStore:
    """Files and their contents; `conn` is the embedded metadata store (tailorlm.db.connect)."""

    def __init__(self, conn: sqlite3.Connection, root: Path, max_bytes: int) -> None:
        self.conn = conn
        self.root = root
        self.max_bytes = max_bytes

    # -- writing --------------------------------------------------------------------------------
    def add(self, stream: BinaryIO | Iterable[bytes], filename: str, purpose: str) -> StoredFile:
        """Store the bytes of `stream` (a binary file or an iterable of chunks) as a new file."""
        if purpose not in PURPOSES:
            raise InvalidRequestError(
                f"invalid purpose {purpose!r}: expected one of {', '.join(PURPOSES)}", param="purpose")
        filename = _clean_filename(filename)
        blobs = self.root / "blobs"
        blobs.mkdir(parents=True, exist_ok=True)
        tmp = blobs / f".upload-{uuid.uuid4().hex}"
        digest, size = hashlib.sha256(), 0
        try:
            with open(tmp, "wb") as out:
                for chunk in _chunks(stream):
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise PayloadTooLargeError(
                            f"the file is larger than the {self.max_bytes:,}-byte upload limit (max_upload_bytes)")
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            sha = digest.hexdigest()
            target = blobs / sha
            if target.exists():
                tmp.unlink()
            else:
                os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        record = StoredFile(f"file-{uuid.uuid4().hex[:24]}", filename, purpose, size, sha, int(time.time()))
        self.conn.execute(
            "INSERT INTO files (id, filename, purpose, bytes, sha256, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (record.id, record.filename, record.purpose, record.bytes, record.sha256, record.created_at),
        )
        return record

    def add_path(self, path: Path, purpose: str = "fine-tune") -> StoredFile:
        """Store a local file (what `tailor tune --data FILE` does before it creates a job)."""
        with open(path, "rb") as fh:
            return self.add(fh, path.name, purpose)

    def delete(self, file_id: str) -> StoredFile:
        record = self.get(file_id)
        self.conn.execute("DELETE FROM files WHERE id = ?", (file_id,))
        still_used = self.conn.execute("SELECT 1 FROM files WHERE sha256 = ? LIMIT 1", (record.sha256,)).fetchone()
        if still_used is None:
            (self.root / "blobs" / record.sha256).unlink(missing_ok=True)
        return record

    # -- reading --------------------------------------------------------------------------------
    def get(self, file_id: str) -> StoredFile:
        row = self.conn.execute("SELECT * FROM files WHERE id = ?", (file_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"No such File object: {file_id}", param="file_id")
        return StoredFile(**dict(row))

    def list(self, purpose: str | None = None, after: str | None = None, limit: int = 10000,
             order: str = "desc") -> list[StoredFile]:
        """Files newest first (or oldest first with order="asc"), after the cursor `after`."""
        direction = "DESC" if order == "desc" else "ASC"
        where, args = [], []
        if purpose:
            where.append("purpose = ?")
            args.append(purpose)
        if after:
            cursor = self.get(after)
            cmp = "<" if direction == "DESC" else ">"
            where.append(f"(created_at, id) {cmp} (?, ?)")
            args += [cursor.created_at, cursor.id]
        sql = "SELECT * FROM files" + (" WHERE " + " AND ".join(where) if where else "")
        sql += f" ORDER BY created_at {direction}, id {direction} LIMIT ?"
        return [StoredFile(**dict(r)) for r in self.conn.execute(sql, (*args, limit))]

    def path(self, file_id: str) -> Path:
        """The content of a file on disk, checked against its digest's size."""
        record = self.get(file_id)
        blob = self.root / "blobs" / record.sha256
        if not blob.is_file() or blob.stat().st_size != record.bytes:
            raise IntegrityError(f"the content of {file_id} is missing or damaged on disk ({blob})")
        return blob


def _chunks(stream: BinaryIO | Iterable[bytes]) -> Iterable[bytes]:
    if hasattr(stream, "read"):
        while chunk := stream.read(CHUNK):  # type: ignore[union-attr]
            yield chunk
    else:
        yield from stream  # type: ignore[misc]


def _clean_filename(name: str | None) -> str:
    """Only the last path component is kept: a filename is a label, never a path."""
    base = os.path.basename((name or "").replace("\\", "/")).strip()
    if not base or base in (".", ".."):
        return "upload.jsonl"
    return base[:255]
