"""API keys: created once (shown once), stored only as sha256 digests in the embedded SQLite store."""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
import uuid
from dataclasses import dataclass

from tailorlm.errors import AuthenticationError, NotFoundError

PREFIX = "tlm-"


@dataclass
class ApiKey:
    id: str
    name: str
    prefix: str
    created_at: int
    revoked_at: int | None


def _digest(key: str) -> str:
    # Keys carry 256 random bits, so a fast hash is enough: there is nothing to brute-force.
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def create(self, name: str) -> tuple[ApiKey, str]:
        """Make a key; the secret is returned once and never stored."""
        secret = PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(f"key_{uuid.uuid4().hex[:12]}", name, secret[:10], int(time.time()), None)
        self.conn.execute(
            "INSERT INTO api_keys (id, name, prefix, sha256, created_at) VALUES (?, ?, ?, ?, ?)",
            (key.id, key.name, key.prefix, _digest(secret), key.created_at),
        )
        return key, secret

    def list(self) -> list[ApiKey]:
        rows = self.conn.execute("SELECT id, name, prefix, created_at, revoked_at FROM api_keys ORDER BY created_at")
        return [ApiKey(**dict(r)) for r in rows]

    def revoke(self, key_id_or_name: str) -> ApiKey:
        row = self.conn.execute(
            "SELECT id FROM api_keys WHERE (id = ? OR name = ?) AND revoked_at IS NULL", (key_id_or_name, key_id_or_name)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no active API key with id or name {key_id_or_name!r}; see `tailor keys list`")
        self.conn.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ?", (int(time.time()), row["id"]))
        return next(k for k in self.list() if k.id == row["id"])

    def active_count(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM api_keys WHERE revoked_at IS NULL").fetchone()[0]

    def enabled(self) -> bool:
        """Auth is on once any key was ever created: revoking the last key locks, never opens, the server."""
        return self.conn.execute("SELECT EXISTS (SELECT 1 FROM api_keys)").fetchone()[0] == 1

    def check(self, authorization: str | None) -> None:
        """Raise AuthenticationError unless keys are off or `authorization` carries an active key."""
        if not self.enabled():
            return
        if not authorization or not authorization.lower().startswith("bearer "):
            raise AuthenticationError(
                "You didn't provide an API key. Send it as 'Authorization: Bearer KEY' (create one with `tailor keys create`)."
            )
        secret = authorization[7:].strip()
        row = self.conn.execute(
            "SELECT 1 FROM api_keys WHERE sha256 = ? AND revoked_at IS NULL", (_digest(secret),)
        ).fetchone()
        if row is None:
            raise AuthenticationError(f"Incorrect API key provided: {secret[:6]}…. Check `tailor keys list`.")
