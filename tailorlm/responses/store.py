"""Responses in the embedded SQLite store: the response object and its input items, as JSON, one row each; for a
background response also its create request until it ends, and (streamed) its numbered events.

Every write is one statement (atomic); the store knows nothing of what the JSON means beyond the response's
`status`, which guarded updates read so that a finished response is never overwritten.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from tailorlm.errors import NotFoundError

EVENTS_PER_STATEMENT = 1000  # 3 variables each, well under SQLite's limit on one statement's


@dataclass
class StoredResponse:
    id: str
    created_at: int
    body: dict[str, Any]  # the response object, as served
    input_items: list[dict[str, Any]]  # every item the model was given, oldest first, each with an id
    request: dict[str, Any] | None = None  # a background response's create request, while it has not ended


class ResponseStore:
    """Stored responses; `conn` is the embedded metadata store (tailorlm.db.connect)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def put(self, response: StoredResponse) -> None:
        self.conn.execute("INSERT INTO responses (id, created_at, body, input_items, request) VALUES (?, ?, ?, ?, ?)",
                          (response.id, response.created_at, _dumps(response.body), _dumps(response.input_items),
                           _dumps(response.request) if response.request is not None else None))

    def get(self, response_id: str, *, param: str | None = None) -> StoredResponse:
        row = self.conn.execute("SELECT * FROM responses WHERE id = ?", (response_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"Response with id '{response_id}' not found.", param=param)
        return _stored(row)

    def update(self, response_id: str, body: dict[str, Any], *, only_from: tuple[str, ...], ended: bool) -> bool:
        """Replace the response object if its status is one of `only_from` (`ended`: drop the request, nothing is
        left to run); whether it was."""
        marks = ", ".join("?" * len(only_from))
        cur = self.conn.execute(
            f"UPDATE responses SET body = ?, request = CASE WHEN ? THEN NULL ELSE request END "
            f"WHERE id = ? AND json_extract(body, '$.status') IN ({marks})",
            (_dumps(body), ended, response_id, *only_from))
        return cur.rowcount == 1

    def unfinished(self) -> list[StoredResponse]:
        """The background responses that have not ended (what a starting server has to run or fail)."""
        return [_stored(r) for r in self.conn.execute("SELECT * FROM responses WHERE request IS NOT NULL ORDER BY seq")]

    def delete(self, response_id: str) -> None:
        if self.conn.execute("DELETE FROM responses WHERE id = ?", (response_id,)).rowcount == 0:
            raise NotFoundError(f"Response with id '{response_id}' not found.")

    # -- a streamed background response's events ------------------------------------------------------------
    def add_events(self, response_id: str, events: list[dict[str, Any]]) -> None:
        """Append events (each carries its `sequence_number`)."""
        for i in range(0, len(events), EVENTS_PER_STATEMENT):
            chunk = events[i:i + EVENTS_PER_STATEMENT]
            self.conn.execute("INSERT INTO response_events (response_id, seq, event) VALUES "
                              + ", ".join(["(?, ?, ?)"] * len(chunk)),
                              [v for e in chunk for v in (response_id, e["sequence_number"], _dumps(e))])

    def events(self, response_id: str, after: int = -1) -> list[dict[str, Any]]:
        """The events numbered after `after`, in order."""
        rows = self.conn.execute("SELECT event FROM response_events WHERE response_id = ? AND seq > ? ORDER BY seq",
                                 (response_id, after))
        return [json.loads(r["event"]) for r in rows]

    def streamed(self, response_id: str) -> bool:
        """Whether the response was created with `background` and `stream` (it has events)."""
        return self.conn.execute("SELECT 1 FROM response_events WHERE response_id = ? LIMIT 1",
                                 (response_id,)).fetchone() is not None


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _stored(row: sqlite3.Row) -> StoredResponse:
    return StoredResponse(row["id"], row["created_at"], json.loads(row["body"]), json.loads(row["input_items"]),
                          json.loads(row["request"]) if row["request"] is not None else None)
