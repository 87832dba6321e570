"""At most one trainer per fine-tuning job: a lease row in the job table, taken atomically, renewed while it runs.

Two things may start a job's training: the server's supervisor (a worker process) and `tailor tune` (in-process),
and two servers may share one home. Statuses cannot guard that: a worker validating files has not set `running`
yet, and `tailor tune`'s process does not carry the job id on its command line, so neither looks busy to a
supervisor. The lease does: `take` is one conditional UPDATE (SQLite serializes writers, so of two racers exactly
one matches), the owner renews it from a heartbeat thread, and a lease is dead once it has expired or, on the
same host, once its owner's process is gone (so a kill -9 frees the job at the next look, not a TTL later).
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable

TTL_S = 30.0  # a lease not renewed for this long is dead, wherever its owner runs
RENEW_S = 5.0  # how often the owner renews it
CLAIMABLE = ("validating_files", "queued", "running")


def owner_id(pid: int | None = None) -> str:
    """This process as a lease owner: host and pid."""
    return f"{socket.gethostname()}:{pid or os.getpid()}"


def local_pid(owner: str | None) -> int:
    """The pid of a lease owner on this host (0 elsewhere, or none)."""
    host, _, pid = (owner or "").rpartition(":")
    return int(pid) if host == socket.gethostname() and pid.isdigit() else 0


def alive(owner: str | None, expires: float | None, now: float | None = None) -> bool:
    """Whether a lease still holds: not expired and, when its owner is on this host, its process exists."""
    if not owner or expires is None or expires < (now or time.time()):
        return False
    pid = local_pid(owner)
    if not pid:
        return True  # another machine's process: the TTL is all we can know
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, another user's
    return True


def take(conn: sqlite3.Connection, job_id: str, owner: str, ttl: float = TTL_S) -> bool:
    """Take the lease of `job_id` for `owner` if nobody live holds it (or `owner` already does); atomic."""
    row = conn.execute("SELECT lease_owner, lease_expires FROM fine_tuning_jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        return False
    held_by = row["lease_owner"]
    dead = held_by if held_by and held_by != owner and not alive(held_by, row["lease_expires"]) else None
    cur = conn.execute(
        f"UPDATE fine_tuning_jobs SET lease_owner = ?, lease_expires = ? WHERE id = ? AND cancel_requested = 0 "
        f"AND status IN ({', '.join('?' * len(CLAIMABLE))}) AND (lease_owner IS NULL OR lease_owner IN (?, ?))",
        (owner, time.time() + ttl, job_id, *CLAIMABLE, owner, dead or owner))
    return cur.rowcount == 1


def renew(conn: sqlite3.Connection, job_id: str, owner: str, ttl: float = TTL_S) -> bool:
    """Extend `owner`'s lease; False if it no longer holds it (it must then stop training)."""
    cur = conn.execute("UPDATE fine_tuning_jobs SET lease_expires = ? WHERE id = ? AND lease_owner = ?",
                       (time.time() + ttl, job_id, owner))
    return cur.rowcount == 1


def release(conn: sqlite3.Connection, job_id: str, owner: str) -> None:
    conn.execute("UPDATE fine_tuning_jobs SET lease_owner = NULL, lease_expires = NULL WHERE id = ? AND lease_owner = ?",
                 (job_id, owner))


class Heartbeat:
    """Renews a lease every `every` seconds in a daemon thread; calls `on_lost` once if it is lost."""

    def __init__(self, conn: sqlite3.Connection, job_id: str, owner: str, on_lost: Callable[[], None], *,
                 every: float = RENEW_S, ttl: float = TTL_S) -> None:
        self.conn, self.job_id, self.owner, self.on_lost = conn, job_id, owner, on_lost
        self.every, self.ttl = every, ttl
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        release(self.conn, self.job_id, self.owner)

    def _run(self) -> None:
        while not self._done.wait(self.every):
            try:
                held = renew(self.conn, self.job_id, self.owner, self.ttl)
            except sqlite3.Error:
                continue  # a busy database: the lease outlives a few missed renewals
            if not held:
                self.on_lost()
                return
