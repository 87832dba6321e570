"""Batches and their lines in SQLite (tailorlm.db): a batch's status and timestamps, each line's request and result.

A line's result is written once (`record` updates only a line without one), so a line that completed before a
restart is never run again; the counts are read from the lines, never kept apart from them.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from tailorlm.batches.input import InputLine, LineError
from tailorlm.errors import InvalidRequestError, NotFoundError

STAMPS = ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at",
          "cancelled_at")
ACTIVE = ("in_progress", "finalizing", "cancelling")  # what the runner still has to do something about
WINDOW_SECONDS = 24 * 3600


@dataclass
class BatchRecord:
    id: str
    created_at: int
    endpoint: str
    input_file_id: str
    completion_window: str
    status: str
    metadata: dict[str, str] | None
    errors: list[dict[str, Any]] | None
    output_file_id: str | None
    error_file_id: str | None
    expires_at: int | None
    stamps: dict[str, int | None] = field(default_factory=dict)
    total: int = 0
    completed: int = 0
    failed: int = 0


@dataclass
class LineResult:
    """One line's answer: the HTTP status and body the endpoint gave (an error object when not 200)."""

    line: int
    custom_id: str
    id: str
    status_code: int
    request_id: str
    body: dict[str, Any]

    def output(self) -> dict[str, Any]:
        """The line of the output (200) or error file, as OpenAI writes it; a failed request's `error` also
        carries the error's code and message, so a client reading either field finds why."""
        error = None
        if self.status_code != 200:
            inner = self.body.get("error") or {}
            error = {"code": inner.get("code") or "request_failed", "message": inner.get("message") or ""}
        return {"id": self.id, "custom_id": self.custom_id,
                "response": {"status_code": self.status_code, "request_id": self.request_id, "body": self.body},
                "error": error}


class BatchStore:
    """`conn` is a connection of its own (tailorlm.db.connect): a batch and its lines go in one transaction,
    which a connection shared with the other stores could not hold; `_lock` keeps this one's writers apart."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._lock = threading.RLock()

    # -- batches --------------------------------------------------------------------------------------------
    def create(self, endpoint: str, input_file_id: str, completion_window: str, metadata: dict[str, str] | None,
               lines: list[InputLine], errors: list[LineError]) -> BatchRecord:
        """A new batch with its lines, `in_progress`; or `failed` with `errors` (and no lines), in one transaction."""
        batch_id, created = f"batch_{uuid.uuid4().hex[:24]}", int(time.time())
        status, stamp = ("failed", "failed_at") if errors else ("in_progress", "in_progress_at")
        with self._lock:
            self._insert(batch_id, created, endpoint, input_file_id, completion_window, metadata, lines, errors,
                         status, stamp)
        return self.get(batch_id)

    def _insert(self, batch_id: str, created: int, endpoint: str, input_file_id: str, completion_window: str,
                metadata: dict[str, str] | None, lines: list[InputLine], errors: list[LineError], status: str,
                stamp: str) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.execute(
                f"INSERT INTO batches (id, created_at, endpoint, input_file_id, completion_window, status, metadata, "
                f"errors, expires_at, {stamp}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (batch_id, created, endpoint, input_file_id, completion_window, status,
                 json.dumps(metadata) if metadata is not None else None,
                 json.dumps([e.as_dict() for e in errors]) if errors else None, created + WINDOW_SECONDS, created))
            if not errors:
                self.conn.executemany(
                    "INSERT INTO batch_lines (batch_id, line, custom_id, request) VALUES (?, ?, ?, ?)",
                    ((batch_id, ln.line, ln.custom_id, json.dumps(ln.body)) for ln in lines))
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def get(self, batch_id: str) -> BatchRecord:
        row = self.conn.execute("SELECT * FROM batches WHERE id = ?", (batch_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"No such batch: {batch_id}", param="batch_id")
        return self._record(row)

    def list(self) -> list[BatchRecord]:
        """Every batch, oldest first."""
        return [self._record(r) for r in self.conn.execute("SELECT * FROM batches ORDER BY seq")]

    def next_active(self) -> BatchRecord | None:
        """The batch the runner works on next: a cancelling one first (cancelling should be quick), then the
        oldest finalizing or in progress."""
        row = self.conn.execute(
            "SELECT * FROM batches WHERE status IN (?, ?, ?) ORDER BY status != 'cancelling', seq LIMIT 1",
            ACTIVE).fetchone()
        return self._record(row) if row is not None else None

    def set_status(self, batch_id: str, status: str, *, only_from: tuple[str, ...] = ACTIVE,
                   **files: str | None) -> bool:
        """Move a batch to `status`, stamping `<status>_at`, if it is in one of `only_from`; False if it was not."""
        sets = ["status = ?", f"{status}_at = ?"] + [f"{k} = ?" for k in files]
        marks = ", ".join("?" * len(only_from))
        with self._lock:
            cur = self.conn.execute(f"UPDATE batches SET {', '.join(sets)} WHERE id = ? AND status IN ({marks})",
                                    (status, int(time.time()), *files.values(), batch_id, *only_from))
        return cur.rowcount == 1

    def cancel(self, batch_id: str) -> BatchRecord:
        """Ask a batch to stop: `cancelling` now, `cancelled` once the runner has written what completed."""
        record = self.get(batch_id)
        if record.status == "cancelling":
            return record
        if not self.set_status(batch_id, "cancelling", only_from=("validating", "in_progress")):
            raise InvalidRequestError(f"The batch {batch_id} is {self.get(batch_id).status} and can no longer be "
                                      "cancelled.", param="batch_id")
        return self.get(batch_id)

    # -- lines ----------------------------------------------------------------------------------------------
    def next_line(self, batch_id: str) -> InputLine | None:
        row = self.conn.execute("SELECT line, custom_id, request FROM batch_lines WHERE batch_id = ? AND done_at "
                                "IS NULL ORDER BY line LIMIT 1", (batch_id,)).fetchone()
        return InputLine(row["line"], row["custom_id"], json.loads(row["request"])) if row is not None else None

    def record(self, batch_id: str, result: LineResult) -> bool:
        """Write a line's result, unless it has one already; whether it was written."""
        with self._lock:
            cur = self.conn.execute(
                "UPDATE batch_lines SET id = ?, status_code = ?, request_id = ?, body = ?, done_at = ? "
                "WHERE batch_id = ? AND line = ? AND done_at IS NULL",
                (result.id, result.status_code, result.request_id, json.dumps(result.body), int(time.time()),
                 batch_id, result.line))
        return cur.rowcount == 1

    def results(self, batch_id: str) -> list[LineResult]:
        """The lines that have completed, in input order."""
        rows = self.conn.execute("SELECT * FROM batch_lines WHERE batch_id = ? AND done_at IS NOT NULL ORDER BY "
                                 "line", (batch_id,))
        return [LineResult(r["line"], r["custom_id"], r["id"], r["status_code"], r["request_id"],
                           json.loads(r["body"])) for r in rows]

    def _record(self, row: sqlite3.Row) -> BatchRecord:
        counts = self.conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(status_code = 200), 0), COALESCE(SUM(status_code != 200), 0) "
            "FROM batch_lines WHERE batch_id = ?", (row["id"],)).fetchone()
        return BatchRecord(
            id=row["id"], created_at=row["created_at"], endpoint=row["endpoint"], input_file_id=row["input_file_id"],
            completion_window=row["completion_window"], status=row["status"],
            metadata=json.loads(row["metadata"]) if row["metadata"] else None,
            errors=json.loads(row["errors"]) if row["errors"] else None,
            output_file_id=row["output_file_id"], error_file_id=row["error_file_id"], expires_at=row["expires_at"],
            stamps={k: row[k] for k in STAMPS}, total=counts[0], completed=counts[1], failed=counts[2])
