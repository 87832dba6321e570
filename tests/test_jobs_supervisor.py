"""The fine-tuning supervisor with a stand-in worker (tests/fake_worker.py): one job at a time, crashes,
cancels of workers that ignore them, shutdown and restart, jobs left behind by a server that died."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tailorlm.config import Settings
from tailorlm.db import connect
from tailorlm.server.jobs_supervisor import JobSupervisor
from tailorlm.tune.jobs import Job, JobStore

ROOT = Path(__file__).resolve().parents[1]


def fake(mode: str) -> Callable[[str], list[str]]:
    return lambda job_id: [sys.executable, "-m", "tests.fake_worker", job_id, mode]


@pytest.fixture
def settings(tailor_home: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.chdir(ROOT)  # `python -m tests.fake_worker` needs the repository on the path
    return Settings(home=tailor_home)


@pytest.fixture
def jobs(settings: Settings) -> JobStore:
    return JobStore(connect(settings.db_path))


@contextmanager
def supervising(settings: Settings, jobs: JobStore, mode: str = "train", **kw) -> Iterator[JobSupervisor]:
    supervisor = JobSupervisor(settings, jobs, command=fake(mode), poll_s=0.05, **kw)
    supervisor.start()
    try:
        yield supervisor
    finally:
        supervisor.stop()


def wait_for(jobs: JobStore, job_id: str, *statuses: str, timeout: float = 30) -> Job:
    deadline = time.monotonic() + timeout
    while (job := jobs.get(job_id)).status not in statuses:
        assert time.monotonic() < deadline, f"{job_id} is {job.status}, not {statuses}"
        time.sleep(0.02)
    return job


def messages(jobs: JobStore, job_id: str) -> list[str]:
    """Newest first."""
    return [e.message for e in reversed(jobs.events(job_id))]


def test_jobs_run_one_at_a_time_in_lower_priority_workers(settings, jobs):
    first, second = jobs.create("m", "file-a"), jobs.create("m", "file-b")
    with supervising(settings, jobs):
        while jobs.get(second.id).status != "succeeded":
            assert len(jobs.with_status("running")) <= 1
            time.sleep(0.02)
    assert jobs.get(first.id).status == "succeeded"
    assert jobs.get(first.id).finished_at <= jobs.get(second.id).finished_at
    started = next(m for m in messages(jobs, first.id) if m.startswith("fake worker"))
    assert int(started.split(" nice ")[1].split()[0]) >= os.getpriority(os.PRIO_PROCESS, 0) + 1
    assert "fake worker for" in (settings.jobs_dir / first.id / "worker.log").read_text()


def test_a_crashed_worker_fails_its_job(settings, jobs):
    job = jobs.create("m", "file-a")
    with supervising(settings, jobs, mode="crash"):
        failed = wait_for(jobs, job.id, "failed")
    assert failed.error["code"] == "worker_failed" and "exited with code 3" in failed.error["message"]
    assert failed.error["param"] is None and failed.worker_pid is None
    assert any("exited with code 3" in m for m in messages(jobs, job.id))


def test_cancel_stops_the_worker_at_a_step(settings, jobs):
    job = jobs.create("m", "file-a")
    with supervising(settings, jobs) as supervisor:
        wait_for(jobs, job.id, "running")
        jobs.request_cancel(job.id)
        supervisor.wake()
        assert wait_for(jobs, job.id, "cancelled", "succeeded").status == "cancelled"


def test_a_worker_that_ignores_cancel_is_terminated_then_killed(settings, jobs):
    job = jobs.create("m", "file-a")
    with supervising(settings, jobs, mode="hang", cancel_grace_s=0.2, kill_after_s=0.3) as supervisor:
        running = wait_for(jobs, job.id, "running")
        jobs.request_cancel(job.id)
        supervisor.wake()
        assert wait_for(jobs, job.id, "cancelled", timeout=10).status == "cancelled"
    with pytest.raises(ProcessLookupError):
        os.kill(running.worker_pid, 0)


def test_shutdown_requeues_and_the_next_start_resumes(settings, jobs):
    job = jobs.create("m", "file-a")
    with supervising(settings, jobs):
        wait_for(jobs, job.id, "running")
        while not jobs.checkpoints(job.id):
            time.sleep(0.02)
    stopped = jobs.get(job.id)
    assert stopped.status == "queued" and stopped.worker_pid is None
    steps_before = len(jobs.checkpoints(job.id))
    with supervising(settings, jobs):
        wait_for(jobs, job.id, "succeeded")
    steps = [c.step_number for c in jobs.checkpoints(job.id)]
    assert sorted(steps) == list(range(1, 21)), "the second worker went on from the first one's last step"
    assert any(m.endswith(f"from step {steps_before}") for m in messages(jobs, job.id))


def test_a_job_left_running_by_a_dead_server_is_requeued(settings, jobs):
    job = jobs.create("m", "file-a")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert jobs.claim(job.id, dead.pid)
    supervisor = JobSupervisor(settings, jobs, command=fake("train"))
    supervisor.recover()
    requeued = jobs.get(job.id)
    assert requeued.status == "queued" and requeued.worker_pid is None
    assert "queued again and resumes from its last checkpoint" in messages(jobs, job.id)[0]


def test_a_live_worker_of_a_dead_server_is_adopted_not_doubled(settings, jobs):
    first, second = jobs.create("m", "file-a"), jobs.create("m", "file-b")
    orphan = subprocess.Popen(fake("train")(first.id), env=settings.env(), start_new_session=True)
    try:
        wait_for(jobs, first.id, "running")
        with supervising(settings, jobs):
            time.sleep(0.3)
            assert jobs.get(second.id).status == "validating_files", "waits for the adopted worker"
            wait_for(jobs, second.id, "succeeded")
        assert jobs.get(first.id).status == "succeeded"
    finally:
        orphan.kill()
        orphan.wait()
