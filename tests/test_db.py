"""The embedded metadata store: processes that open a new database at the same moment migrate it once."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

from tailorlm.db import MIGRATIONS, connect


def _open(path: str, start, results) -> None:
    start.wait()
    try:
        connect(Path(path)).close()
        results.put("ok")
    except Exception as exc:  # reported to the test, which names it
        results.put(f"{type(exc).__name__}: {exc}")


def test_processes_opening_a_new_database_together_migrate_it_once(tmp_path: Path) -> None:
    """Two servers (or a server and `tailor tune`) starting together used to both apply a migration: the second
    failed on "duplicate column" or "table already exists"."""
    ctx = mp.get_context("spawn")
    for attempt in range(3):
        path = tmp_path / f"race-{attempt}.db"
        start, results = ctx.Barrier(6), ctx.Queue()
        procs = [ctx.Process(target=_open, args=(str(path), start, results)) for _ in range(6)]
        for p in procs:
            p.start()
        outcomes = [results.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        assert outcomes == ["ok"] * 6, outcomes
        assert connect(path).execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
