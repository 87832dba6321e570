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
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tailorlm.errors import IntegrityError, InvalidRequestError, NotFoundError, PayloadTooLargeError

PURPOSES = ("fine-tune", "fine-tune-results", "assistants", "batch", "batch_output", "user_data", "evals", "vision")
# What a client may upload (OpenAI's CreateFileRequest); "fine-tune-results" files are written by jobs,
# "batch_output" files by batches.
UPLOAD_PURPOSES = ("fine-tune", "assistants", "batch", "user_data", "evals", "vision")
CHUNK = 1024 * 1024


@dataclass
class StoredFile:
    """One uploaded file (served as OpenAI's `OpenAIFile`, server/protocol/files.py)."""

    id: str
    filename: str
    purpose: str
    bytes: int
    sha256: str
    created_at: int


class FileStore:
    """Files and their contents; `conn` is the embedded metadata store (tailorlm.db.connect)."""

    def __init__(self, conn: sqlite3.Connection, root: Path, max_bytes: int) -> None:
        self.conn = conn
        self.root = root
        self.max_bytes = max_bytes

    # -- writing --------------------------------------------------------------------------------
    def add(self, stream: BinaryIO | Iterable[bytes], filename: str, purpose: str) -> StoredFile:
        """Store the bytes of `stream` (a binary file or an iterable of chunks) as a new file."""
        check_purpose(purpose)
        with self.upload(filename) as upload:
            for chunk in _chunks(stream):
                upload.write(chunk)
            return upload.commit(purpose)

    def upload(self, filename: str | None) -> "Upload":
        """A file written piece by piece (what a streamed HTTP upload needs); use it as a context manager."""
        return Upload(self, filename)

    def add_path(self, path: Path, purpose: str = "fine-tune") -> StoredFile:
        """Store a local file (what `tailor tune --data FILE` does before it creates a job)."""
        with open(path, "rb") as fh:
            return self.add(fh, path.name, purpose)

    def delete(self, file_id: str) -> StoredFile:
        record = self.get(file_id)
        self.conn.execute("DELETE FROM files WHERE id = ?", (file_id,))
        if self._in_use(record.sha256):
            return record
        # Moved aside, then looked at again: an upload of the same bytes that commits meanwhile has
        # either put its row in (we move the blob back) or will rename its own copy into place.
        blob = self.root / "blobs" / record.sha256
        aside = blob.with_name(f".delete-{uuid.uuid4().hex}")
        try:
            os.replace(blob, aside)
        except FileNotFoundError:
            return record
        if self._in_use(record.sha256):
            os.replace(aside, blob)
        else:
            aside.unlink()
        return record

    def _in_use(self, sha256: str) -> bool:
        return self.conn.execute("SELECT 1 FROM files WHERE sha256 = ? LIMIT 1", (sha256,)).fetchone() is not None

    # -- reading --------------------------------------------------------------------------------
    def get(self, file_id: str) -> StoredFile:
        row = self.conn.execute("SELECT * FROM files WHERE id = ?", (file_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"No such File object: {file_id}", param="file_id")
        return StoredFile(**dict(row))

    def list(self) -> list[StoredFile]:
        """Every file, oldest first; ties within one second in insertion order (SQLite's rowid), not by the random id."""
        return [StoredFile(**dict(r)) for r in self.conn.execute("SELECT * FROM files ORDER BY created_at, rowid")]

    def path(self, file_id: str) -> Path:
        """The content of a file on disk, checked against its digest's size."""
        record = self.get(file_id)
        blob = self.root / "blobs" / record.sha256
        if not blob.is_file() or blob.stat().st_size != record.bytes:
            raise IntegrityError(f"the content of {file_id} is missing or damaged on disk ({blob})")
        return blob


class Upload:
    """One upload in progress: bytes go to a temporary blob, hashed and counted as they come.

    `commit` names the blob by its digest and records the file; leaving the block without
    committing (an error, a client that went away) removes the temporary blob.
    """

    def __init__(self, store: FileStore, filename: str | None) -> None:
        self.store = store
        self.filename = _clean_filename(filename)
        self.blobs = store.root / "blobs"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.tmp = self.blobs / f".upload-{uuid.uuid4().hex}"
        self.out: BinaryIO = open(self.tmp, "wb")
        self.digest = hashlib.sha256()
        self.size = 0

    def __enter__(self) -> "Upload":
        return self

    def __exit__(self, *exc: object) -> None:
        self.out.close()
        self.tmp.unlink(missing_ok=True)  # gone already once committed

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.store.max_bytes:
            raise PayloadTooLargeError(
                f"the file is larger than the {self.store.max_bytes:,}-byte upload limit (max_upload_bytes)")
        self.digest.update(chunk)
        self.out.write(chunk)

    def commit(self, purpose: str) -> StoredFile:
        check_purpose(purpose)
        self.out.flush()
        os.fsync(self.out.fileno())
        self.out.close()
        sha = self.digest.hexdigest()
        record = StoredFile(f"file-{uuid.uuid4().hex[:24]}", self.filename, purpose, self.size, sha, int(time.time()))
        conn = self.store.conn
        # The row goes in before the blob is renamed into place, and the rename always happens (same
        # digest, same bytes), so a concurrent delete of the last other file with this digest can
        # never leave our row without its blob (see FileStore.delete).
        conn.execute(
            "INSERT INTO files (id, filename, purpose, bytes, sha256, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (record.id, record.filename, record.purpose, record.bytes, record.sha256, record.created_at),
        )
        try:
            os.replace(self.tmp, self.blobs / sha)
        except BaseException:
            conn.execute("DELETE FROM files WHERE id = ?", (record.id,))
            raise
        return record


def check_purpose(purpose: str | None, allowed: tuple[str, ...] = PURPOSES) -> str:
    """`purpose` if it is one of `allowed`, else InvalidRequestError naming the choices."""
    if purpose not in allowed:
        raise InvalidRequestError(
            f"invalid purpose {purpose!r}: expected one of {', '.join(allowed)}", param="purpose")
    return purpose


def _chunks(stream: BinaryIO | Iterable[bytes]) -> Iterable[bytes]:
    if hasattr(stream, "read"):
        while chunk := stream.read(CHUNK):  # type: ignore[union-attr]
            yield chunk
    else:
        yield from stream  # type: ignore[misc]


def _clean_filename(name: str | None) -> str:
    """Only the last path component is kept, without control characters (a NUL would cut the name short in any
    C string that later meets it): a filename is a label, never a path."""
    printable = "".join(ch for ch in (name or "") if ch.isprintable() or ch == " ")
    base = os.path.basename(printable.replace("\\", "/")).strip()
    if not base or base in (".", ".."):
        return "upload.jsonl"
    return base[:255]
