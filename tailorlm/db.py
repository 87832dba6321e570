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
    # v3: knowledge bases (vector stores). Chunk text lives in the FTS5 table (rowid = kb_chunks.id);
    # vectors are float32 BLOBs; `version` changes with every write so that vector caches know to refresh, and
    # chunk ids are never reused (AUTOINCREMENT), so a cache can trust that an id it holds means the same chunk.
    """
    CREATE TABLE kb (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL,
        metadata TEXT NOT NULL DEFAULT '{}',
        embedding_model TEXT NOT NULL,
        version INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE kb_files (
        kb_id TEXT NOT NULL REFERENCES kb (id) ON DELETE CASCADE,
        id TEXT NOT NULL,
        filename TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        chunks INTEGER NOT NULL,
        status TEXT NOT NULL,
        error TEXT,
        created_at INTEGER NOT NULL,
        attributes TEXT NOT NULL DEFAULT '{}',
        PRIMARY KEY (kb_id, id)
    );
    CREATE INDEX kb_files_name ON kb_files (kb_id, filename);
    CREATE TABLE kb_chunks (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kb_id TEXT NOT NULL,
        file_id TEXT NOT NULL,
        position INTEGER NOT NULL,
        start_char INTEGER NOT NULL,
        end_char INTEGER NOT NULL,
        heading TEXT,
        vector BLOB NOT NULL,
        FOREIGN KEY (kb_id, file_id) REFERENCES kb_files (kb_id, id) ON DELETE CASCADE
    );
    CREATE INDEX kb_chunks_file ON kb_chunks (kb_id, file_id, position);
    CREATE VIRTUAL TABLE kb_fts USING fts5 (text, heading, kb_id UNINDEXED, tokenize = 'unicode61 remove_diacritics 2');
    """,
    # v4: per-file chunking (JSON [max tokens, overlap]; NULL: the base's own), store expiry (OpenAI's
    # expires_after as JSON, counted from last_active_at), and file batches (the file ids each one added).
    """
    ALTER TABLE kb_files ADD COLUMN chunking TEXT;
    ALTER TABLE kb ADD COLUMN expires_after TEXT;
    ALTER TABLE kb ADD COLUMN last_active_at INTEGER;
    CREATE TABLE kb_batches (
        id TEXT PRIMARY KEY,
        kb_id TEXT NOT NULL REFERENCES kb (id) ON DELETE CASCADE,
        created_at INTEGER NOT NULL,
        file_ids TEXT NOT NULL,
        cancelled INTEGER NOT NULL DEFAULT 0
    )
    """,
    # v5: a fine-tuning job's lease: at most one trainer per job, whoever starts it (the server's worker or
    # `tailor tune`). The owner ("host:pid") renews `lease_expires` while it runs (tailorlm/tune/lease.py).
    """
    ALTER TABLE fine_tuning_jobs ADD COLUMN lease_owner TEXT;
    ALTER TABLE fine_tuning_jobs ADD COLUMN lease_expires REAL
    """,
    # v6: stored Responses (/v1/responses): the response object and the items it was given (the whole
    # conversation, earlier turns included, so that a continuation reads one row), as JSON.
    """
    CREATE TABLE responses (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL,
        body TEXT NOT NULL,
        input_items TEXT NOT NULL
    )
    """,
    # v7: batches (/v1/batches) and their lines: each line's request is copied in when the batch is validated,
    # and its result written when it completes, so a restarted server resumes and never runs a line twice.
    """
    CREATE TABLE batches (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL,
        endpoint TEXT NOT NULL,
        input_file_id TEXT NOT NULL,
        completion_window TEXT NOT NULL,
        status TEXT NOT NULL,
        metadata TEXT,
        errors TEXT,
        output_file_id TEXT,
        error_file_id TEXT,
        expires_at INTEGER,
        in_progress_at INTEGER,
        finalizing_at INTEGER,
        completed_at INTEGER,
        failed_at INTEGER,
        expired_at INTEGER,
        cancelling_at INTEGER,
        cancelled_at INTEGER
    );
    CREATE TABLE batch_lines (
        batch_id TEXT NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
        line INTEGER NOT NULL,
        custom_id TEXT NOT NULL,
        request TEXT NOT NULL,
        id TEXT,
        status_code INTEGER,
        request_id TEXT,
        body TEXT,
        done_at INTEGER,
        PRIMARY KEY (batch_id, line)
    )
    """,
    # v8: files added to a knowledge base and not yet ingested, so that a server that stops or dies resumes them
    # (tailorlm/server/knowledge.py): a row from the add until the knowledge base records the file.
    """
    CREATE TABLE kb_ingest_queue (
        kb_id TEXT NOT NULL REFERENCES kb (id) ON DELETE CASCADE,
        file_id TEXT NOT NULL,
        filename TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        attributes TEXT,
        chunking TEXT,
        PRIMARY KEY (kb_id, file_id)
    )
    """,
    # v9: the token usage of each answered batch line (summed into the batch's `usage`). A line that expired
    # before it ran is done (done_at) with no status_code: it is reported, never run.
    """
    ALTER TABLE batch_lines ADD COLUMN input_tokens INTEGER;
    ALTER TABLE batch_lines ADD COLUMN output_tokens INTEGER;
    ALTER TABLE batch_lines ADD COLUMN cached_tokens INTEGER;
    ALTER TABLE batch_lines ADD COLUMN reasoning_tokens INTEGER
    """,
    # v10: background responses. `request` is the create request of a background response until it ends (a
    # restarted server runs it again from there, or fails it); a streamed one's events are kept, numbered, so
    # that a client can resume its stream after any sequence number, during the run and after it.
    """
    ALTER TABLE responses ADD COLUMN request TEXT;
    CREATE TABLE response_events (
        response_id TEXT NOT NULL REFERENCES responses (id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        event TEXT NOT NULL,
        PRIMARY KEY (response_id, seq)
    )
    """,
    # v11: a fine-tuning job's method (supervised or dpo: which hyperparameters `config` holds and what trains),
    # and a pause request, which its trainer takes at the next step as a cancel is (tailorlm/tune/jobs.py).
    """
    ALTER TABLE fine_tuning_jobs ADD COLUMN method TEXT NOT NULL DEFAULT 'supervised';
    ALTER TABLE fine_tuning_jobs ADD COLUMN pause_requested INTEGER NOT NULL DEFAULT 0
    """,
]

_lock = threading.Lock()


def _wal(conn: sqlite3.Connection, wait_s: float = 30.0) -> None:
    """Switch to WAL. Changing the journal mode takes an exclusive lock that SQLite's busy timeout does not wait
    for: processes opening a new database together get "database is locked" at once, so this retries."""
    import time

    deadline = time.monotonic() + wait_s
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating and migrating as needed) the database; safe to share across threads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
    conn.row_factory = sqlite3.Row
    _wal(conn)
    conn.execute("PRAGMA foreign_keys=ON")
    with _lock:  # threads of this process; other processes are kept apart by the write lock below
        for number, sql in enumerate(MIGRATIONS, start=1):
            if conn.execute("PRAGMA user_version").fetchone()[0] >= number:
                continue
            conn.execute("BEGIN IMMEDIATE")
            try:
                # read again under the write lock: another process starting at the same moment may have just
                # applied this very migration while we waited for the lock
                if conn.execute("PRAGMA user_version").fetchone()[0] < number:
                    for statement in filter(str.strip, sql.split(";")):
                        conn.execute(statement)
                    conn.execute(f"PRAGMA user_version={number}")
                conn.execute("COMMIT")
            except Exception:
                conn.execute("ROLLBACK")
                raise
    return conn
