"""The embedded metadata store: one SQLite file under TAILOR_HOME, schema migrated on open."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

# Each entry upgrades the schema by one version; never edit a released entry, append a new one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        prefix TEXT NOT NULL,
        sha256 TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL,
        revoked_at INTEGER
    );
    """,
    # v2: uploaded files (content stored once per sha256 under HOME/files) and fine-tuning jobs.
    """
    CREATE TABLE files (
        id TEXT PRIMARY KEY,
        filename TEXT NOT NULL,
        purpose TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX files_created ON files (created_at, id);
    CREATE TABLE fine_tuning_jobs (
        id TEXT PRIMARY KEY,
        seq INTEGER NOT NULL UNIQUE,
        created_at INTEGER NOT NULL,
        model TEXT NOT NULL,
        training_file TEXT NOT NULL,
        validation_file TEXT,
        suffix TEXT,
        seed INTEGER NOT NULL,
        config TEXT NOT NULL,
        status TEXT NOT NULL,
        error TEXT,
        fine_tuned_model TEXT,
        finished_at INTEGER,
        estimated_finish INTEGER,
        trained_tokens INTEGER,
        result_files TEXT NOT NULL DEFAULT '[]',
        metadata TEXT,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        worker_pid INTEGER
    );
    CREATE TABLE fine_tuning_events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        job_id TEXT NOT NULL REFERENCES fine_tuning_jobs (id) ON DELETE CASCADE,
        created_at INTEGER NOT NULL,
        level TEXT NOT NULL,
        type TEXT NOT NULL,
        message TEXT NOT NULL,
        data TEXT
    );
    CREATE INDEX fine_tuning_events_job ON fine_tuning_events (job_id, seq);
    CREATE TABLE fine_tuning_checkpoints (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        job_id TEXT NOT NULL REFERENCES fine_tuning_jobs (id) ON DELETE CASCADE,
        created_at INTEGER NOT NULL,
        step_number INTEGER NOT NULL,
        metrics TEXT NOT NULL,
        fine_tuned_model_checkpoint TEXT NOT NULL
    );
    """,
]

_lock = threading.Lock()


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating and migrating as needed) the database; safe to share across threads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA foreign_keys=ON")
    with _lock:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for number, sql in enumerate(MIGRATIONS[version:], start=version + 1):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in filter(str.strip, sql.split(";")):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={number}")
                conn.execute("COMMIT")
            except Exception:
                conn.execute("ROLLBACK")
                raise
    return conn
