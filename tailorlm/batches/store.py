"""Batches and their lines in SQLite (tailorlm.db): a batch's status and timestamps, each line's request and result.

A line's result is written once (`record` updates only a line without one), so a line that completed before a
restart is never run again; the counts and the token usage are read from the lines, never kept apart from them.
A line the batch's window closed on before it ran is done with no answer (`expire_unrun`): reported, never run.
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
EXPIRED = {"code": "batch_expired", "message": "This request could not be executed before the completion window "
           "expired."}


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
    failed: int = 0  # answered with an error, or expired before running
    usage: dict[str, int] = field(default_factory=dict)  # input, output, cached and reasoning tokens, summed

    @property
    def expired(self) -> bool:
        """Whether the window has closed on it (its lines without an answer will never run)."""
        return self.expires_at is not None and time.time() >= self.expires_at


@dataclass
class LineResult:
    """One line's answer: the HTTP status and body the endpoint gave (an error object when not 200); no status
    and no body for a line that expired before it ran."""

    line: int
    custom_id: str
    id: str
    status_code: int | None
    request_id: str | None
    body: dict[str, Any] | None

    def output(self) -> dict[str, Any]:
        """The line of the output (200) or error file, as OpenAI writes it; a failed request's `error` also
        carries the error's code and message, so a client reading either field finds why."""
        if self.status_code is None or self.body is None:
            return {"id": self.id, "custom_id": self.custom_id, "response": None, "error": EXPIRED}
        error = None
        if self.status_code != 200:
            inner = self.body.get("error") or {}
            error = {"code": inner.get("code") or "request_failed", "message": inner.get("message") or ""}
        return {"id": self.id, "custom_id": self.custom_id,
                "response": {"status_code": self.status_code, "request_id": self.request_id, "body": self.body},
                "error": error}

    def tokens(self) -> tuple[int, int, int, int]:
        """(input, output, cached, reasoning) tokens of an answer, whichever endpoint's usage shape it has
        (chat and completions: prompt/completion tokens; responses: input/output; embeddings: prompt only)."""
        usage = (self.body or {}).get("usage") if self.status_code == 200 else None
        if not isinstance(usage, dict):
            return 0, 0, 0, 0
        inputs = usage.get("input_tokens", usage.get("prompt_tokens")) or 0
        outputs = usage.get("output_tokens", usage.get("completion_tokens")) or 0
        cached = (usage.get("input_tokens_details") or usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        reasoning = (usage.get("output_tokens_details") or usage.get("completion_tokens_details") or {}).get(
            "reasoning_tokens")
        return int(inputs), int(outputs), int(cached or 0), int(reasoning or 0)


class BatchStore:
    """`conn` is a connection of its own (tailorlm.db.connect): a batch and its lines go in one transaction,
    which a connection shared with the other stores could not hold; `_lock` keeps this one's writers apart."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._lock = threading.RLock()

    # -- batches --------------------------------------------------------------------------------------------
    def create(self, endpoint: str, input_file_id: str, completion_window: str, metadata: dict[str, str] | None,
               lines: list[InputLine], errors: list[LineError], window_s: int) -> BatchRecord:
        """A new batch with its lines, `in_progress` and expiring `window_s` seconds from now; or `failed` with
        `errors` (and no lines), in one transaction."""
        batch_id, created = f"batch_{uuid.uuid4().hex[:24]}", int(time.time())
        status, stamp = ("failed", "failed_at") if errors else ("in_progress", "in_progress_at")
        with self._lock:
            self._insert(batch_id, created, created + window_s, endpoint, input_file_id, completion_window, metadata,
                         lines, errors, status, stamp)
        return self.get(batch_id)

    def _insert(self, batch_id: str, created: int, expires: int, endpoint: str, input_file_id: str,
                completion_window: str, metadata: dict[str, str] | None, lines: list[InputLine],
                errors: list[LineError], status: str, stamp: str) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.execute(
                f"INSERT INTO batches (id, created_at, endpoint, input_file_id, completion_window, status, metadata, "
                f"errors, expires_at, {stamp}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (batch_id, created, endpoint, input_file_id, completion_window, status,
                 json.dumps(metadata) if metadata is not None else None,
                 json.dumps([e.as_dict() for e in errors]) if errors else None, expires, created))
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
                "UPDATE batch_lines SET id = ?, status_code = ?, request_id = ?, body = ?, done_at = ?, "
                "input_tokens = ?, output_tokens = ?, cached_tokens = ?, reasoning_tokens = ? "
                "WHERE batch_id = ? AND line = ? AND done_at IS NULL",
                (result.id, result.status_code, result.request_id, json.dumps(result.body), int(time.time()),
                 *result.tokens(), batch_id, result.line))
        return cur.rowcount == 1

    def expire_unrun(self, batch_id: str) -> int:
        """Mark every line still without a result as expired (done, no answer), in one statement; how many."""
        with self._lock:
            cur = self.conn.execute(
                "UPDATE batch_lines SET id = 'batch_req_' || lower(hex(randomblob(12))), done_at = ? "
                "WHERE batch_id = ? AND done_at IS NULL", (int(time.time()), batch_id))
        return cur.rowcount

    def results(self, batch_id: str) -> list[LineResult]:
        """The lines that have completed (or expired), in input order."""
        rows = self.conn.execute("SELECT * FROM batch_lines WHERE batch_id = ? AND done_at IS NOT NULL ORDER BY "
                                 "line", (batch_id,))
        return [LineResult(r["line"], r["custom_id"], r["id"], r["status_code"], r["request_id"],
                           json.loads(r["body"]) if r["body"] is not None else None) for r in rows]

    def _record(self, row: sqlite3.Row) -> BatchRecord:
        counts = self.conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(status_code = 200), 0), COALESCE(SUM(done_at IS NOT NULL AND "
            "COALESCE(status_code, 0) != 200), 0), COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0), "
            "COALESCE(SUM(cached_tokens), 0), COALESCE(SUM(reasoning_tokens), 0) FROM batch_lines WHERE batch_id = ?",
            (row["id"],)).fetchone()
        return BatchRecord(
            id=row["id"], created_at=row["created_at"], endpoint=row["endpoint"], input_file_id=row["input_file_id"],
            completion_window=row["completion_window"], status=row["status"],
            metadata=json.loads(row["metadata"]) if row["metadata"] else None,
            errors=json.loads(row["errors"]) if row["errors"] else None,
            output_file_id=row["output_file_id"], error_file_id=row["error_file_id"], expires_at=row["expires_at"],
            stamps={k: row[k] for k in STAMPS}, total=counts[0], completed=counts[1], failed=counts[2],
            usage=dict(zip(("inputs", "outputs", "cached", "reasoning"), counts[3:])))
