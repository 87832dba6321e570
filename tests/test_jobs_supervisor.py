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
from tailorlm.tune import lease
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
    assert lease.take(jobs.conn, job.id, lease.owner_id(dead.pid)) and jobs.claim(job.id, dead.pid)
    assert not jobs.get(job.id).leased  # its owner's process is gone: no TTL to wait for
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


def trainers(jobs: JobStore, job_id: str) -> list[str]:
    return [m for m in messages(jobs, job_id) if m.startswith("fake worker")]


def test_two_supervisors_on_one_job_start_one_trainer(settings, jobs):
    """Two servers sharing a home race for the same queued job: the lease (one conditional UPDATE) lets exactly
    one worker train it, and the loser's supervisor neither fails the job nor starts another."""
    for _ in range(3):
        job = jobs.create("m", "file-a")
        other = JobStore(connect(settings.db_path))
        with supervising(settings, jobs), supervising(settings, other):
            wait_for(jobs, job.id, "succeeded")
        assert len(trainers(jobs, job.id)) == 1, messages(jobs, job.id)
        assert jobs.get(job.id).lease_owner is None  # released at the end


def test_a_job_trained_elsewhere_is_never_started_twice(settings, jobs):
    """`tailor tune` trains in its own process, whose command line does not name the job: while it holds the
    lease, even before it sets `running` (validating files), a supervisor starts nothing for that job."""
    job = jobs.create("m", "file-a")
    me = lease.owner_id()
    assert lease.take(jobs.conn, job.id, me)
    assert not lease.take(jobs.conn, job.id, lease.owner_id(1)), "a second owner cannot take a live lease"
    with supervising(settings, jobs):
        time.sleep(0.5)
        assert trainers(jobs, job.id) == [] and jobs.get(job.id).status == "validating_files"
        lease.release(jobs.conn, job.id, me)  # the other trainer stopped without finishing: it runs here now
        wait_for(jobs, job.id, "succeeded")
    assert len(trainers(jobs, job.id)) == 1


def test_an_expired_lease_is_dead_and_a_lost_lease_stops_its_heartbeat(settings, jobs):
    job = jobs.create("m", "file-a")
    far = "another-host:4242"
    assert lease.take(jobs.conn, job.id, far, ttl=0.2)
    assert jobs.get(job.id).leased  # another machine: only the TTL tells
    time.sleep(0.3)
    assert not jobs.get(job.id).leased
    me = lease.owner_id()
    assert lease.take(jobs.conn, job.id, me)  # taken over once expired
    lost = []
    with lease.Heartbeat(jobs.conn, job.id, me, on_lost=lambda: lost.append(1), every=0.05):
        jobs.conn.execute("UPDATE fine_tuning_jobs SET lease_owner = 'x:1' WHERE id = ?", (job.id,))
        time.sleep(0.3)
    assert lost == [1]


def test_the_real_worker_leaves_a_job_another_trainer_holds_untouched(settings, jobs):
    """The worker takes the lease before anything else: it used to validate the files, set `queued` over a
    running job and claim it a second time."""
    from tailorlm.tune.worker import run_job

    job = jobs.create("m", "file-a")
    assert lease.take(jobs.conn, job.id, lease.owner_id())  # e.g. `tailor tune` in this very process
    before = messages(jobs, job.id)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lease, "owner_id", lambda pid=None: "this-host-too:999999")  # a second trainer
        left = run_job(job.id, Settings(home=settings.home))
    assert left.status == "validating_files" and left.lease_owner == lease.owner_id()
    assert messages(jobs, job.id) == before
