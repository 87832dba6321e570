"""Fine-tuning jobs in the embedded store: records, events and checkpoints, shaped like OpenAI's objects.

The CLI (`tailor tune`) and the API (`POST /v1/fine_tuning/jobs`) both create a row here and
run it with `tailorlm.tune.worker.run_job`; the row is the single source of truth for a job's
status, so a job survives a restart of whatever ran it.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tailorlm.errors import InvalidRequestError, NotFoundError
from tailorlm.tune import lease

# `paused`: stopped at a step with its checkpoint, by a pause request; it trains again only once resumed.
Status = Literal["validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled"]
ACTIVE: tuple[str, ...] = ("validating_files", "queued", "running")
TERMINAL: tuple[str, ...] = ("succeeded", "failed", "cancelled")
Auto = Literal["auto"]
Method = Literal["supervised", "dpo"]
DEFAULT_BETA = 0.1  # DPO's "auto" beta: the paper's and TRL's default
VALIDATED = "Files validated"  # the event that says a worker has checked the job's files


class Hyperparameters(BaseModel):
    """What a job trains with. OpenAI's three knobs, plus ours: `tuning` (lora|full) and `lora_rank`.

    "auto" values are resolved when training starts and written back, as OpenAI reports them.
    """

    model_config = ConfigDict(extra="forbid")

    n_epochs: int | Auto = "auto"
    batch_size: int | Auto = "auto"
    learning_rate_multiplier: float | Auto = "auto"
    tuning: Literal["lora", "full"] = "lora"
    lora_rank: int = Field(16, ge=1, le=512)

    @field_validator("n_epochs", "batch_size")
    @classmethod
    def _positive_int(cls, v: int | str) -> int | str:
        if v != "auto" and int(v) < 1:
            raise ValueError("must be at least 1 or 'auto'")
        return v

    @field_validator("learning_rate_multiplier")
    @classmethod
    def _positive_float(cls, v: float | str) -> float | str:
        if v != "auto" and not float(v) > 0:
            raise ValueError("must be greater than 0 or 'auto'")
        return v

    def openai(self) -> dict[str, Any]:
        """The `hyperparameters` object of a FineTuningJob."""
        return {"n_epochs": self.n_epochs, "batch_size": self.batch_size,
                "learning_rate_multiplier": self.learning_rate_multiplier}


class DPOHyperparameters(Hyperparameters):
    """A DPO job's: OpenAI's `beta` besides the rest. DPO trains a LoRA adapter only: its reference model is the
    base with the adapter switched off, so that no second copy of the weights is needed (docs/decisions.md)."""

    beta: float | Auto = "auto"

    @field_validator("beta")
    @classmethod
    def _beta_range(cls, v: float | str) -> float | str:
        if v != "auto" and not 0 < float(v) <= 2:
            raise ValueError("must be greater than 0 and at most 2, or 'auto'")
        return v

    @field_validator("tuning")
    @classmethod
    def _lora_only(cls, v: str) -> str:
        if v != "lora":
            raise ValueError("dpo trains a LoRA adapter only (its reference model is the base with the adapter off)")
        return v

    def openai(self) -> dict[str, Any]:
        return {"beta": self.beta, **super().openai()}


HYPERPARAMETERS: dict[str, type[Hyperparameters]] = {"supervised": Hyperparameters, "dpo": DPOHyperparameters}


@dataclass
class Job:
    id: str
    created_at: int
    model: str
    training_file: str
    validation_file: str | None
    suffix: str | None
    seed: int
    hyperparameters: Hyperparameters  # DPOHyperparameters for a dpo job
    status: str
    method: Method = "supervised"
    error: dict[str, Any] | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    estimated_finish: int | None = None
    trained_tokens: int | None = None
    result_files: list[str] = field(default_factory=list)
    metadata: dict[str, str] | None = None
    cancel_requested: bool = False
    pause_requested: bool = False
    worker_pid: int | None = None
    lease_owner: str | None = None  # who trains it now (tailorlm/tune/lease.py), while `leased`
    lease_expires: float | None = None

    @property
    def leased(self) -> bool:
        """Whether a live trainer holds this job (the server's worker or `tailor tune`, on any machine)."""
        return lease.alive(self.lease_owner, self.lease_expires)

    @property
    def target_model(self) -> str:
        """The name the result is registered under: OpenAI's `ft:<base>:<suffix>:<job-id>`."""
        return f"ft:{self.model}:{self.suffix or 'tuned'}:{self.id}"


@dataclass
class Event:
    id: str
    created_at: int
    level: str
    type: str
    message: str
    data: dict[str, Any] | None


@dataclass
class Checkpoint:
    id: str
    job_id: str
    created_at: int
    step_number: int
    metrics: dict[str, float]
    fine_tuned_model_checkpoint: str


def clean_suffix(suffix: str | None) -> str | None:
    """A suffix usable inside a model name: lower-case letters, digits, '.', '_' and single '-'."""
    if suffix is None or suffix == "":
        return None
    if len(suffix) > 64:
        raise InvalidRequestError("suffix must be at most 64 characters", param="suffix")
    cleaned = re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9._-]+", "-", suffix.lower())).strip("-._")
    if not cleaned:
        raise InvalidRequestError(f"suffix {suffix!r} has no usable characters (a-z, 0-9, . _ -)", param="suffix")
    return cleaned


class JobStore:
    """Jobs, events and checkpoints; `conn` is the embedded metadata store (tailorlm.db.connect)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    # -- jobs -----------------------------------------------------------------------------------
    def create(self, model: str, training_file: str, validation_file: str | None = None,
               hyperparameters: Hyperparameters | None = None, suffix: str | None = None,
               seed: int | None = None, metadata: dict[str, str] | None = None, method: Method = "supervised") -> Job:
        job_id = f"ftjob-{uuid.uuid4().hex[:24]}"
        seed = int(seed) if seed is not None else int.from_bytes(uuid.uuid4().bytes[:4], "little") % (2**31)
        hp = HYPERPARAMETERS[method].model_validate(hyperparameters.model_dump() if hyperparameters else {})
        now = int(time.time())
        # One statement, so atomic on its own: no explicit transaction on a connection that the
        # server shares between threads (a second BEGIN there would fail).
        self.conn.execute(
            "INSERT INTO fine_tuning_jobs (id, seq, created_at, model, training_file, validation_file, suffix,"
            " seed, config, status, metadata, method) SELECT ?, COALESCE(MAX(seq), 0) + 1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?"
            " FROM fine_tuning_jobs",
            (job_id, now, model, training_file, validation_file, clean_suffix(suffix), seed,
             hp.model_dump_json(), "validating_files", json.dumps(metadata) if metadata else None, method),
        )
        self.event(job_id, f"Created fine-tuning job: {job_id}")
        return self.get(job_id)

    def get(self, job_id: str) -> Job:
        row = self.conn.execute("SELECT * FROM fine_tuning_jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"No fine-tuning job with id {job_id!r}", param="fine_tuning_job_id")
        return _job(row)

    def list(self) -> list[Job]:
        """Every job, oldest first."""
        return [_job(r) for r in self.conn.execute("SELECT * FROM fine_tuning_jobs ORDER BY seq")]

    def needing_file(self, file_id: str) -> list[str]:
        """Unfinished jobs that read `file_id` (again, when one resumes after a restart), oldest first."""
        marks = ",".join("?" * len(TERMINAL))
        rows = self.conn.execute(
            f"SELECT id FROM fine_tuning_jobs WHERE status NOT IN ({marks}) AND ? IN (training_file, validation_file) "
            "ORDER BY seq", (*TERMINAL, file_id)).fetchall()
        return [r["id"] for r in rows]

    def with_status(self, *statuses: str) -> list[Job]:
        """Jobs in any of `statuses`, oldest first (the order a worker takes them in)."""
        marks = ",".join("?" * len(statuses))
        rows = self.conn.execute(
            f"SELECT * FROM fine_tuning_jobs WHERE status IN ({marks}) ORDER BY seq", statuses).fetchall()
        return [_job(r) for r in rows]

    def update(self, job_id: str, **fields: Any) -> Job:
        """Set columns of a job; dict/list values are stored as JSON, Hyperparameters as its JSON."""
        if not fields:
            return self.get(job_id)
        cols, args = [], []
        for key, value in fields.items():
            if key == "hyperparameters":
                key, value = "config", value.model_dump_json()
            elif isinstance(value, dict | list):
                value = json.dumps(value)
            elif isinstance(value, bool):
                value = int(value)
            cols.append(f"{key} = ?")
            args.append(value)
        self.conn.execute(f"UPDATE fine_tuning_jobs SET {', '.join(cols)} WHERE id = ?", (*args, job_id))
        return self.get(job_id)

    def set_status(self, job_id: str, status: Status, **fields: Any) -> Job:
        if status in TERMINAL:
            fields.setdefault("finished_at", int(time.time()))
            fields.setdefault("worker_pid", None)
        return self.update(job_id, status=status, **fields)

    def files_validated(self, job_id: str) -> bool:
        """Whether a worker has checked the job's files (a job that stopped before then checks them again)."""
        return self.conn.execute("SELECT 1 FROM fine_tuning_events WHERE job_id = ? AND message LIKE ? LIMIT 1",
                                 (job_id, VALIDATED + "%")).fetchone() is not None

    def validated(self, job_id: str) -> bool:
        """validating_files -> queued, only from there (a job paused or cancelled meanwhile stays so)."""
        cur = self.conn.execute(
            "UPDATE fine_tuning_jobs SET status = 'queued' WHERE id = ? AND status = 'validating_files'", (job_id,))
        return cur.rowcount == 1

    def claim(self, job_id: str, pid: int) -> bool:
        """Atomically move a queued job to running for worker `pid`, which must hold its lease (lease.take);
        False if it does not, or the job was cancelled or paused or is no longer pending."""
        cur = self.conn.execute(
            "UPDATE fine_tuning_jobs SET status = 'running', worker_pid = ? WHERE id = ? AND lease_owner = ? "
            "AND status IN ('validating_files', 'queued') AND cancel_requested = 0 AND pause_requested = 0",
            (pid, job_id, lease.owner_id(pid)))
        return cur.rowcount == 1

    def request_cancel(self, job_id: str) -> Job:
        """Cancel a job: at once if it has not started (or is paused), else flag it for its worker to stop at a step."""
        job = self.get(job_id)
        if job.status in TERMINAL:
            raise InvalidRequestError(f"Job {job_id} has already {job.status}; it cannot be cancelled",
                                      param="fine_tuning_job_id")
        self.conn.execute("UPDATE fine_tuning_jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
        cur = self.conn.execute(
            "UPDATE fine_tuning_jobs SET status = 'cancelled', finished_at = ? "
            "WHERE id = ? AND status IN ('validating_files', 'queued', 'paused')", (int(time.time()), job_id))
        if cur.rowcount:
            self.event(job_id, "Job cancelled while paused" if job.status == "paused" else "Job cancelled before it started")
        return self.get(job_id)

    def cancel_requested(self, job_id: str) -> bool:
        row = self.conn.execute("SELECT cancel_requested FROM fine_tuning_jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row and row[0])

    def stop_requested(self, job_id: str) -> bool:
        """Whether its trainer should stop at the next step: the job is to be cancelled or paused."""
        row = self.conn.execute("SELECT cancel_requested OR pause_requested FROM fine_tuning_jobs WHERE id = ?",
                                (job_id,)).fetchone()
        return bool(row and row[0])

    def request_pause(self, job_id: str) -> Job:
        """Pause a job: at once if no trainer holds it yet, else flag it for its trainer to stop at the next step
        with a checkpoint. Pausing a paused job changes nothing; a finished one cannot be paused."""
        job = self.get(job_id)
        if job.status in TERMINAL:
            raise InvalidRequestError(f"Job {job_id} has already {job.status}; it cannot be paused",
                                      param="fine_tuning_job_id")
        if job.cancel_requested:
            raise InvalidRequestError(f"Job {job_id} is being cancelled; it cannot be paused",
                                      param="fine_tuning_job_id")
        if job.status == "paused":
            return job
        self.conn.execute("UPDATE fine_tuning_jobs SET pause_requested = 1 WHERE id = ?", (job_id,))
        # not started (or its trainer is gone): nobody will see the flag, so it is paused here; a trainer that
        # holds the lease and has not claimed the job yet finds `claim` refused and pauses it itself
        if job.status in ("validating_files", "queued") and not job.leased:
            self.paused(job_id, f"Job paused before {'it started' if job.status == 'queued' else 'its files were checked'}")
        return self.get(job_id)

    def paused(self, job_id: str, message: str) -> Job:
        """Settle a job whose pause was asked for as paused (its trainer stopped, or it had none)."""
        cur = self.conn.execute(
            "UPDATE fine_tuning_jobs SET status = 'paused', worker_pid = NULL, estimated_finish = NULL "
            "WHERE id = ? AND pause_requested = 1 AND status NOT IN (?, ?, ?)", (job_id, *TERMINAL))
        if cur.rowcount:
            self.event(job_id, message)
        return self.get(job_id)

    def request_resume(self, job_id: str) -> Job:
        """Resume a paused job: back in the queue, to continue from its last checkpoint; a pause not yet taken
        (its trainer has not reached the next step) is simply withdrawn."""
        job = self.get(job_id)
        if job.status in TERMINAL or (job.status != "paused" and not job.pause_requested):
            raise InvalidRequestError(f"Job {job_id} is {job.status}, not paused; only a paused job can be resumed",
                                      param="fine_tuning_job_id")
        back = "queued" if self.files_validated(job_id) else "validating_files"  # where it paused from
        cur = self.conn.execute(
            "UPDATE fine_tuning_jobs SET pause_requested = 0, status = CASE status WHEN 'paused' THEN ? "
            "ELSE status END WHERE id = ? AND (status = 'paused' OR pause_requested = 1)", (back, job_id))
        if cur.rowcount:
            self.event(job_id, "Job resumed" + (": queued to continue from its last checkpoint"
                                                if job.status == "paused" else " before it paused"))
        return self.get(job_id)

    # -- events ---------------------------------------------------------------------------------
    def event(self, job_id: str, message: str, level: str = "info", type: str = "message",
              data: dict[str, Any] | None = None) -> None:
        self.conn.execute(
            "INSERT INTO fine_tuning_events (id, job_id, created_at, level, type, message, data) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (f"ftevent-{uuid.uuid4().hex[:24]}", job_id, int(time.time()), level, type, message,
             json.dumps(data) if data is not None else None),
        )

    def events(self, job_id: str) -> list[Event]:
        """A job's events, oldest first."""
        return [Event(r["id"], r["created_at"], r["level"], r["type"], r["message"],
                      json.loads(r["data"]) if r["data"] else None) for r in self._rows("fine_tuning_events", job_id)]

    # -- checkpoints ----------------------------------------------------------------------------
    def add_checkpoint(self, job_id: str, step: int, metrics: dict[str, float], model_name: str) -> Checkpoint:
        cp = Checkpoint(f"ftckpt-{uuid.uuid4().hex[:24]}", job_id, int(time.time()), step, metrics, model_name)
        self.conn.execute(
            "INSERT INTO fine_tuning_checkpoints (id, job_id, created_at, step_number, metrics, "
            "fine_tuned_model_checkpoint) VALUES (?, ?, ?, ?, ?, ?)",
            (cp.id, job_id, cp.created_at, step, json.dumps(metrics), model_name),
        )
        return cp

    def checkpoints(self, job_id: str) -> list[Checkpoint]:
        """A job's checkpoints, oldest first."""
        return [Checkpoint(r["id"], r["job_id"], r["created_at"], r["step_number"], json.loads(r["metrics"]),
                           r["fine_tuned_model_checkpoint"]) for r in self._rows("fine_tuning_checkpoints", job_id)]

    def _rows(self, table: str, job_id: str) -> list[sqlite3.Row]:
        """The rows of a job's `table` (events or checkpoints), oldest first; a 404 for an unknown job."""
        self.get(job_id)
        return self.conn.execute(f"SELECT * FROM {table} WHERE job_id = ? ORDER BY seq", (job_id,)).fetchall()


def _job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"], created_at=row["created_at"], model=row["model"], training_file=row["training_file"],
        validation_file=row["validation_file"], suffix=row["suffix"], seed=row["seed"],
        hyperparameters=HYPERPARAMETERS[row["method"]].model_validate_json(row["config"]), status=row["status"],
        method=row["method"],
        error=json.loads(row["error"]) if row["error"] else None, fine_tuned_model=row["fine_tuned_model"],
        finished_at=row["finished_at"], estimated_finish=row["estimated_finish"],
        trained_tokens=row["trained_tokens"], result_files=json.loads(row["result_files"] or "[]"),
        metadata=json.loads(row["metadata"]) if row["metadata"] else None,
        cancel_requested=bool(row["cancel_requested"]), pause_requested=bool(row["pause_requested"]),
        worker_pid=row["worker_pid"],
        lease_owner=row["lease_owner"], lease_expires=row["lease_expires"],
    )
