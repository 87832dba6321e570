"""A stand-in for `python -m tailorlm.tune.worker JOB_ID`, to test the supervisor's handling of workers
that succeed, crash, hang or get stopped, in a fraction of a second and without training anything.

Usage: python -m tests.fake_worker JOB_ID MODE, MODE one of:
  train  claim, then 20 steps of 50 ms: cancel flag -> cancelled, SIGTERM -> queued again, else succeeded
  crash  claim, then exit with code 3
  hang   claim, then ignore the cancel flag and SIGTERM until killed
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

from tailorlm.config import Settings
from tailorlm.db import connect
from tailorlm.tune import lease
from tailorlm.tune.jobs import JobStore

STEPS = 20


def main(job_id: str, mode: str) -> int:
    jobs = JobStore(connect(Settings().db_path))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "hang" else lambda *_: stop.set())
    owner = lease.owner_id()
    if not lease.take(jobs.conn, job_id, owner):
        return 0  # another trainer holds it
    with lease.Heartbeat(jobs.conn, job_id, owner, on_lost=stop.set, every=0.2):
        return _train(jobs, job_id, mode, stop)


def _train(jobs: JobStore, job_id: str, mode: str, stop: threading.Event) -> int:
    if not jobs.claim(job_id, os.getpid()):
        return 0
    done = len(jobs.checkpoints(job_id))  # resumes after its checkpoints
    jobs.event(job_id, f"fake worker pid {os.getpid()} nice {os.getpriority(os.PRIO_PROCESS, 0)} from step {done}")
    print(f"fake worker for {job_id}", flush=True)
    if mode == "crash":
        return 3
    while mode == "hang":
        time.sleep(0.05)
    for step in range(done + 1, STEPS + 1):
        if jobs.cancel_requested(job_id):
            jobs.set_status(job_id, "cancelled")
            return 0
        if stop.is_set():
            jobs.set_status(job_id, "queued", worker_pid=None)
            return 0
        time.sleep(0.05)
        jobs.add_checkpoint(job_id, step, {"step": step}, f"ft:fake:{job_id}:ckpt-step-{step}")
    jobs.set_status(job_id, "succeeded", fine_tuned_model=f"ft:fake:{job_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
