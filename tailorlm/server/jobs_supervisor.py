"""Runs fine-tuning jobs one at a time, each in its own worker process, so training never blocks serving.

The job rows in SQLite are the only channel between the server and a worker: the supervisor starts
`python -m tailorlm.tune.worker JOB_ID` for the oldest pending job, at a lower CPU priority; the worker
moves the job through its statuses and stops at a step when the job's cancel flag is set, or on
SIGTERM, which it answers by saving a checkpoint and putting the job back in the queue. So a server
that stops, or dies, loses at most the steps since the last checkpoint.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tailorlm.config import Settings
from tailorlm.tune import lease
from tailorlm.tune.jobs import TERMINAL, Job, JobStore

log = logging.getLogger("tailorlm.server")
WorkerCommand = Callable[[str], list[str]]


def worker_command(job_id: str) -> list[str]:
    return [sys.executable, "-m", "tailorlm.tune.worker", job_id]


@dataclass
class _Worker:
    job_id: str
    pid: int
    proc: subprocess.Popen | None  # None: a worker adopted from an earlier server, not our child
    deadline: float | None = None  # when a worker asked to stop is signalled (SIGTERM, then SIGKILL)
    terminated: bool = False

    def alive(self, jobs: JobStore) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return jobs.get(self.job_id).leased  # adopted: whoever trains it holds its lease while it runs

    def signal(self, sig: int) -> None:
        if self.pid <= 0:
            return  # a trainer on another machine: it sees the cancel flag at its next step
        try:  # SIGKILL goes to the worker's whole session (it leads its own), SIGTERM to it alone
            os.killpg(self.pid, sig) if sig == signal.SIGKILL else os.kill(self.pid, sig)
        except ProcessLookupError:
            pass


class JobSupervisor:
    """A thread that polls the job table and keeps at most one worker process running."""

    def __init__(self, settings: Settings, jobs: JobStore, *, command: WorkerCommand = worker_command,
                 poll_s: float = 0.5, cancel_grace_s: float = 30.0, kill_after_s: float = 10.0,
                 shutdown_wait_s: float = 60.0, niceness: int = 10) -> None:
        self.settings = settings
        self.jobs = jobs
        self.command = command
        self.poll_s = poll_s
        self.cancel_grace_s = cancel_grace_s  # a cancelled worker's time to notice the flag and exit
        self.kill_after_s = kill_after_s  # then SIGTERM; this long after it, SIGKILL
        self.shutdown_wait_s = shutdown_wait_s  # a stopped worker's time to checkpoint and requeue
        self.niceness = niceness
        self._worker: _Worker | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self.recover()
        self._thread = threading.Thread(target=self._run, name="tailor-jobs", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Look at the queue now rather than at the next poll (a job was created or cancelled)."""
        self._wake.set()

    def stop(self) -> None:
        """Stop polling; a running worker gets SIGTERM and `shutdown_wait_s` to checkpoint and requeue."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        worker = self._worker
        if worker is None or not worker.alive(self.jobs):
            return
        log.info("stopping the fine-tuning worker of %s; the job resumes at the next start", worker.job_id)
        worker.signal(signal.SIGTERM)
        deadline = time.monotonic() + self.shutdown_wait_s
        while worker.alive(self.jobs) and time.monotonic() < deadline:
            time.sleep(0.1)
        if worker.alive(self.jobs):
            log.warning("the worker of %s did not stop in %.0fs; killing it", worker.job_id, self.shutdown_wait_s)
            worker.signal(signal.SIGKILL)
        if worker.proc is not None:
            worker.proc.wait(timeout=10)

    def recover(self) -> None:
        """Jobs left running by a trainer that is gone (the server or machine died) go back to the queue."""
        for job in self.jobs.with_status("running"):
            if not job.leased:
                self._orphaned(job)

    # -- the loop -------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._tick()
            except Exception:  # a bad row or a full disk must not end supervision
                log.exception("fine-tuning supervisor")
            self._wake.wait(self.poll_s)
            self._wake.clear()

    def _tick(self) -> None:
        if self._worker is not None:
            if self._worker.alive(self.jobs):
                self._watch(self._worker)
                return
            self._reap(self._worker)
            self._worker = None
        for job in self.jobs.with_status("validating_files", "queued", "running"):
            if job.leased:  # trained by another server's worker or by `tailor tune`: watch it, start nothing
                self._worker = _Worker(job.id, lease.local_pid(job.lease_owner), None)
                return
            if job.status == "running":
                self._orphaned(job)
        pending = [j for j in self.jobs.with_status("validating_files", "queued")
                   if not (j.cancel_requested or j.pause_requested)]
        if pending:
            self._worker = self._spawn(pending[0])

    def _spawn(self, job: Job) -> _Worker:
        folder = self.settings.jobs_dir / job.id
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "worker.log", "ab") as out:
            # Its own session: a Ctrl-C at the server's terminal reaches the server, which then stops
            # the worker cleanly (SIGTERM), instead of killing it mid-step.
            # Its OpenMP threads wait passively: a background process whose idle threads spin starves the
            # server's decode (docs/decisions.md, "OpenMP wait policy").
            env = {"OMP_WAIT_POLICY": "PASSIVE", **self.settings.env()}
            proc = subprocess.Popen(self.command(job.id), stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:  # training yields the CPU to serving
            os.setpriority(os.PRIO_PROCESS, proc.pid, min(19, os.getpriority(os.PRIO_PROCESS, 0) + self.niceness))
        except OSError:
            pass
        log.info("fine-tuning %s in worker %d (log: %s)", job.id, proc.pid, folder / "worker.log")
        return _Worker(job.id, proc.pid, proc)

    def _watch(self, worker: _Worker) -> None:
        """A worker whose job is cancelled, paused (or already over) gets a grace period, then SIGTERM, then SIGKILL."""
        now = time.monotonic()
        if worker.deadline is None:
            job = self.jobs.get(worker.job_id)
            if job.cancel_requested or job.status in (*TERMINAL, "paused"):
                worker.deadline = now + self.cancel_grace_s
        elif now >= worker.deadline:
            if not worker.terminated:
                log.warning("the worker of %s did not stop after its job ended; sending SIGTERM", worker.job_id)
                worker.signal(signal.SIGTERM)
                worker.terminated, worker.deadline = True, now + self.kill_after_s
            else:
                log.warning("the worker of %s ignored SIGTERM; killing it", worker.job_id)
                worker.signal(signal.SIGKILL)
                worker.deadline = float("inf")

    def _reap(self, worker: _Worker) -> None:
        """Settle the job of a worker that exited without finishing it."""
        code = worker.proc.wait() if worker.proc is not None else None
        job = self.jobs.get(worker.job_id)
        if job.status in (*TERMINAL, "paused") or job.leased or (
                job.status == "running" and job.worker_pid not in (None, worker.pid)):
            return  # done or paused, or another trainer holds it (ours found it taken and left it alone)
        if job.cancel_requested or job.pause_requested:
            self._orphaned(job)
        elif worker.proc is None:  # adopted: its exit status is unknown
            if job.status == "running":
                self._orphaned(job)
        elif job.status == "queued" and code == 0:
            log.info("the worker of %s stopped and requeued it", job.id)
        else:
            how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
            log_path = self.settings.jobs_dir / job.id / "worker.log"
            message = f"The training worker {how} before the job finished; see {log_path}"
            self.jobs.set_status(job.id, "failed", error={"code": "worker_failed", "message": message, "param": None})
            self.jobs.event(job.id, message, level="error")

    def _orphaned(self, job: Job) -> None:
        """A job whose worker is gone: cancelled or paused if that was asked for, else queued again to resume."""
        if job.cancel_requested:
            self.jobs.set_status(job.id, "cancelled")
            self.jobs.event(job.id, "Job cancelled")
            return
        if job.pause_requested:
            self.jobs.paused(job.id, "Job paused (its worker stopped before it took the pause); it continues from "
                                     "its last checkpoint when resumed")
            return
        self.jobs.set_status(job.id, "queued", worker_pid=None)
        self.jobs.event(job.id, f"The worker of this job (pid {job.worker_pid}) is gone, most likely because the "
                                "server stopped; the job is queued again and resumes from its last checkpoint")
        log.info("requeued %s: its worker %s is gone", job.id, job.worker_pid)
