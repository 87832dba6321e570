"""File batches (OpenAI's vector store file batches): which files one request added to a knowledge base, and
whether it was cancelled. A batch's status and counts are derived from its files, so only this is stored."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

from tailorlm import db
from tailorlm.config import Settings
from tailorlm.errors import NotFoundError


@dataclass
class FileBatch:
    id: str
    kb_id: str
    created_at: int
    file_ids: list[str]
    cancelled: bool


class FileBatches:
    def __init__(self, settings: Settings) -> None:
        self.conn = db.connect(settings.db_path)

    def create(self, kb_id: str, file_ids: list[str]) -> FileBatch:
        batch = FileBatch(f"vsfb_{uuid.uuid4().hex}", kb_id, int(time.time()), list(file_ids), False)
        self.conn.execute("INSERT INTO kb_batches (id, kb_id, created_at, file_ids) VALUES (?, ?, ?, ?)",
                          (batch.id, kb_id, batch.created_at, json.dumps(batch.file_ids)))
        return batch

    def get(self, kb_id: str, batch_id: str) -> FileBatch:
        row = self.conn.execute("SELECT * FROM kb_batches WHERE kb_id = ? AND id = ?", (kb_id, batch_id)).fetchone()
        if row is None:
            raise NotFoundError(f"No file batch {batch_id} in vector store {kb_id}", param="batch_id")
        return FileBatch(row["id"], row["kb_id"], row["created_at"], json.loads(row["file_ids"]), bool(row["cancelled"]))

    def cancel(self, kb_id: str, batch_id: str) -> FileBatch:
        self.get(kb_id, batch_id)
        self.conn.execute("UPDATE kb_batches SET cancelled = 1 WHERE id = ?", (batch_id,))
        return self.get(kb_id, batch_id)
