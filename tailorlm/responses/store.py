"""Responses in the embedded SQLite store: the response object and its input items, as JSON, one row each.

A row is written once, in one statement (atomic), and read by id; the store knows nothing of what the JSON means.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from tailorlm.errors import NotFoundError


@dataclass
class StoredResponse:
    id: str
    created_at: int
    body: dict[str, Any]  # the response object, as served
    input_items: list[dict[str, Any]]  # every item the model was given, oldest first, each with an id


class ResponseStore:
    """Stored responses; `conn` is the embedded metadata store (tailorlm.db.connect)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def put(self, response: StoredResponse) -> None:
        self.conn.execute("INSERT INTO responses (id, created_at, body, input_items) VALUES (?, ?, ?, ?)",
                          (response.id, response.created_at, json.dumps(response.body, ensure_ascii=False),
                           json.dumps(response.input_items, ensure_ascii=False)))

    def get(self, response_id: str, *, param: str | None = None) -> StoredResponse:
        row = self.conn.execute("SELECT * FROM responses WHERE id = ?", (response_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"Response with id '{response_id}' not found.", param=param)
        return StoredResponse(row["id"], row["created_at"], json.loads(row["body"]), json.loads(row["input_items"]))

    def delete(self, response_id: str) -> None:
        if self.conn.execute("DELETE FROM responses WHERE id = ?", (response_id,)).rowcount == 0:
            raise NotFoundError(f"Response with id '{response_id}' not found.")
