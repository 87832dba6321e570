"""/v1/fine_tuning/jobs end to end: real HTTP, the official `openai` client, bodies validated against the
OpenAI spec. The protocol tests run with the job supervisor paused, so jobs stay where the API put them;
the training tests run the real worker (tailorlm.tune.worker) on a tiny model."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import openai
import pytest

from tailorlm.config import Settings
from tailorlm.store import ModelStore
from tests.server_harness import LiveServer, kill9, live_server, served_process
from tests.spec import validate
from tests.tiny import make_tiny_model, save_tiny_tokenizer

MODEL = "tiny-chat"
JOBS = "/v1/fine_tuning/jobs"
needs_worker = pytest.mark.skipif(importlib.util.find_spec("tailorlm.tune.worker") is None,
                                  reason="the training worker (tailorlm.tune.worker) is not there yet")


def pairs_jsonl(n: int, good: str = "Hello.", bad: str = "Paris.", start: int = 0) -> bytes:
    """Preference pairs the tiny model starts out getting wrong: it finds `bad` ~11 nats likelier than `good`."""
    rows = [{"input": {"messages": [{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": f"Hello {i}?"}]},
             "preferred_output": [{"role": "assistant", "content": good}],
             "non_preferred_output": [{"role": "assistant", "content": bad}]} for i in range(start, start + n)]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def chat_jsonl(n: int) -> bytes:
    rows = [{"messages": [{"role": "user", "content": f"What is the capital of France? ({i})"},
                          {"role": "assistant", "content": "The capital of France is Paris."}]} for i in range(n)]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def make_home(root: Path) -> Path:
    folder = save_tiny_tokenizer(make_tiny_model("llama", root / "src"))
    ModelStore(root / "home").import_path(folder, name=MODEL, show_progress=False)
    return root / "home"


def job_body(res, status: int = 200) -> dict:
    assert res.status_code == status, res.text
    body = res.json()
    validate(body, "FineTuningJob")
    return body


def error(res, status: int, param: str | None = None) -> dict:
    assert res.status_code == status, res.text
    body = res.json()
    validate(body, "ErrorResponse")
    assert body["error"]["param"] == param
    return body["error"]


# -- the protocol, with the supervisor paused ----------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with live_server(Settings(home=make_home(tmp_path_factory.mktemp("ft-api")), preload=False)) as live:
        live.app.state.tailor.supervisor.stop()  # nothing runs: jobs stay validating_files
        yield live


@pytest.fixture(scope="module")
def client(server):
    return server.client()


@pytest.fixture(scope="module")
def training_file(client) -> str:
    return client.files.create(file=("train.jsonl", chat_jsonl(12)), purpose="fine-tune").id


def create(server, **body):
    with server.http() as http:
        return http.post(JOBS, json=body)


def test_create_and_retrieve(server, client, training_file):
    body = job_body(create(server, model=MODEL, training_file=training_file, suffix="My Bot!", seed=7,
                           metadata={"team": "docs"},
                           method={"type": "supervised", "supervised": {"hyperparameters": {
                               "n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5,
                               "tuning": "full", "lora_rank": 8}}}))
    assert body["status"] == "validating_files" and body["model"] == MODEL and body["seed"] == 7
    assert body["hyperparameters"] == {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5}
    assert body["method"] == {"type": "supervised", "supervised": {"hyperparameters": body["hyperparameters"]}}
    assert body["user_provided_suffix"] == "my-bot" and body["metadata"] == {"team": "docs"}
    stored = server.app.state.tailor.jobs.get(body["id"]).hyperparameters
    assert (stored.tuning, stored.lora_rank) == ("full", 8), "our extensions are kept for the worker"
    with server.http() as http:
        assert job_body(http.get(f"{JOBS}/{body['id']}")) == body
    job = client.fine_tuning.jobs.retrieve(body["id"])
    assert (job.id, job.training_file, job.hyperparameters.n_epochs) == (body["id"], training_file, 2)
    # the deprecated top-level form and the defaults
    old = job_body(create(server, model=MODEL.upper(), training_file=training_file, hyperparameters={"n_epochs": 3}))
    assert old["hyperparameters"] == {"n_epochs": 3, "batch_size": "auto", "learning_rate_multiplier": "auto"}
    assert old["model"] == MODEL and old["user_provided_suffix"] is None
    made = client.fine_tuning.jobs.create(model=MODEL, training_file=training_file, validation_file=training_file)
    assert made.status == "validating_files" and made.validation_file == training_file


def test_list_pages_newest_first(server, client, training_file):
    ids = [client.fine_tuning.jobs.create(model=MODEL, training_file=training_file,
                                          metadata={"batch": "pages", "i": str(i)}).id for i in range(3)]
    with server.http() as http:
        first = http.get(JOBS, params={"limit": 2}).json()
        validate(first, "ListPaginatedFineTuningJobsResponse")
        assert [j["id"] for j in first["data"]] == ids[::-1][:2] and first["has_more"] is True
        rest = http.get(JOBS, params={"limit": 2, "after": first["data"][-1]["id"]}).json()
        validate(rest, "ListPaginatedFineTuningJobsResponse")
        assert rest["data"][0]["id"] == ids[0]
        error(http.get(JOBS, params={"after": "ftjob-nope"}), 404, "after")
    listed = [j.id for j in client.fine_tuning.jobs.list(limit=2)]  # the client pages on
    assert listed[:3] == ids[::-1] and len(listed) == len(set(listed))
    tagged = client.fine_tuning.jobs.list(metadata={"batch": "pages", "i": "1"})
    assert [j.id for j in tagged.data] == [ids[1]]


def test_cancel_before_start_and_events(server, client, training_file):
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=training_file)
    with server.http() as http:
        # the job will read its file again when it starts (or resumes): the file cannot go before the job ends
        res = http.delete(f"/v1/files/{training_file}")
        assert res.status_code == 409 and "which has not finished" in res.json()["error"]["message"]
        validate(res.json(), "ErrorResponse")
        cancelled = job_body(http.post(f"{JOBS}/{job.id}/cancel"))
        assert cancelled["status"] == "cancelled" and cancelled["finished_at"] is not None
        error(http.post(f"{JOBS}/{job.id}/cancel"), 400, "fine_tuning_job_id")
        events = http.get(f"{JOBS}/{job.id}/events").json()
        validate(events, "ListFineTuningJobEventsResponse")
        assert [e["message"] for e in events["data"]] == ["Job cancelled before it started",
                                                         f"Created fine-tuning job: {job.id}"]
        one = http.get(f"{JOBS}/{job.id}/events", params={"limit": 1}).json()
        assert one["has_more"] is True
        older = http.get(f"{JOBS}/{job.id}/events", params={"after": one["data"][0]["id"]}).json()
        validate(older, "ListFineTuningJobEventsResponse")
        assert [e["message"] for e in older["data"]] == [f"Created fine-tuning job: {job.id}"]
    assert [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=1)][-1].startswith("Created")


def test_checkpoints_list(server, client, training_file):
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=training_file)
    with server.http() as http:
        empty = http.get(f"{JOBS}/{job.id}/checkpoints").json()
        assert empty == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}
        validate(empty, "ListFineTuningJobCheckpointsResponse")
        jobs = server.app.state.tailor.jobs
        made = [jobs.add_checkpoint(job.id, step, {"step": step, "train_loss": 1.0 / step},
                                    f"ft:{MODEL}:tuned:{job.id}:ckpt-step-{step}") for step in (10, 20, 30)]
        page = http.get(f"{JOBS}/{job.id}/checkpoints", params={"limit": 2}).json()
        validate(page, "ListFineTuningJobCheckpointsResponse")
        assert [c["step_number"] for c in page["data"]] == [30, 20] and page["has_more"] is True
        assert (page["first_id"], page["last_id"]) == (made[2].id, made[1].id)
        assert page["data"][0]["fine_tuning_job_id"] == job.id
    steps = [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id, limit=1)]
    assert steps == [30, 20, 10]


def test_invalid_requests(server, training_file):
    error(create(server, model="no-such-model", training_file=training_file), 404, "model")
    assert error(create(server, model="no-such-model", training_file=training_file), 404,
                 "model")["message"].startswith("no-such-model is no model, adapter or preset in the store")
    error(create(server, model="../etc", training_file=training_file), 400, "model")
    error(create(server, model=MODEL, training_file="file-nope"), 400, "training_file")
    error(create(server, model=MODEL, training_file=training_file, validation_file="file-nope"), 400,
          "validation_file")
    with server.http() as http:
        other = http.post("/v1/files", files={"file": ("b.jsonl", b"{}\n")}, data={"purpose": "batch"}).json()["id"]
    assert "purpose" in error(create(server, model=MODEL, training_file=other), 400, "training_file")["message"]
    for kind in ("reinforcement", "nope"):
        message = error(create(server, model=MODEL, training_file=training_file, method={"type": kind, kind: {}}),
                        400, "method.type")["message"]
        assert "'supervised' and 'dpo' fine-tuning are" in message
    error(create(server, model=MODEL, training_file=training_file,
                 integrations=[{"type": "wandb", "wandb": {"project": "p"}}]), 400, "integrations")
    error(create(server, model=MODEL, training_file=training_file, suffix="x" * 65), 400, "suffix")
    error(create(server, model=MODEL, training_file=training_file, seed=-1), 400, "seed")
    error(create(server, model=MODEL, training_file=training_file, hyperparameters={"n_epochs": 0}), 400,
          "hyperparameters.n_epochs")
    error(create(server, model=MODEL, training_file=training_file, hyperparameters={"warmup": 3}), 400,
          "hyperparameters.warmup")
    error(create(server, model=MODEL, training_file=training_file, hyperparameters={"n_epochs": 1},
                 method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}}), 400,
          "hyperparameters")
    error(create(server, training_file=training_file), 400, "model")
    with server.http() as http:
        for path in (f"{JOBS}/ftjob-nope", f"{JOBS}/ftjob-nope/events", f"{JOBS}/ftjob-nope/checkpoints"):
            error(http.get(path), 404, "fine_tuning_job_id")
        error(http.post(f"{JOBS}/ftjob-nope/cancel"), 404, "fine_tuning_job_id")


def dpo(**hyperparameters) -> dict:
    return {"type": "dpo", "dpo": {"hyperparameters": hyperparameters}}


def test_create_a_dpo_job(server, client):
    pairs = client.files.create(file=("pairs.jsonl", pairs_jsonl(12)), purpose="fine-tune").id
    body = job_body(create(server, model=MODEL, training_file=pairs, validation_file=pairs,
                           method=dpo(beta=0.2, n_epochs=2, lora_rank=8)))
    assert body["method"] == {"type": "dpo", "dpo": {"hyperparameters": {
        "beta": 0.2, "n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": "auto"}}}
    assert body["hyperparameters"] == {"n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": "auto"}
    stored = server.app.state.tailor.jobs.get(body["id"])
    assert (stored.method, stored.hyperparameters.beta, stored.hyperparameters.lora_rank) == ("dpo", 0.2, 8)
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=pairs, method={"type": "dpo"})  # all auto
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == "auto"
    assert client.fine_tuning.jobs.retrieve(job.id).method.dpo is not None


def test_dpo_bad_input_is_a_400_naming_line_and_field(server, client, training_file):
    good, lines = pairs_jsonl(5).decode().splitlines(), []
    for n, line in enumerate(good, start=1):
        row = json.loads(line)
        if n == 3:
            del row["non_preferred_output"]
        lines.append(json.dumps(row))
    broken = client.files.create(file=("broken.jsonl", "\n".join(lines).encode()), purpose="fine-tune").id
    pairs = client.files.create(file=("pairs.jsonl", pairs_jsonl(12)), purpose="fine-tune").id
    message = error(create(server, model=MODEL, training_file=broken, method=dpo()), 400, "training_file")["message"]
    assert message == f"training_file {broken} line 3: non_preferred_output is missing"
    message = error(create(server, model=MODEL, training_file=pairs, validation_file=broken, method=dpo()), 400,
                    "validation_file")["message"]
    assert "line 3: non_preferred_output is missing" in message
    # a file of the other kind, for either method
    assert "not preference pairs" in error(create(server, model=MODEL, training_file=training_file, method=dpo()),
                                           400, "training_file")["message"]
    assert "holds preference pairs" in error(create(server, model=MODEL, training_file=pairs), 400,
                                             "training_file")["message"]
    # the hyperparameters
    error(create(server, model=MODEL, training_file=pairs, method=dpo(beta=3)), 400, "method.dpo.hyperparameters.beta")
    error(create(server, model=MODEL, training_file=pairs, method=dpo(beta=0)), 400, "method.dpo.hyperparameters.beta")
    assert "LoRA adapter only" in error(create(server, model=MODEL, training_file=pairs, method=dpo(tuning="full")),
                                        400, "method.dpo.hyperparameters.tuning")["message"]
    error(create(server, model=MODEL, training_file=pairs, method=dpo(warmup=1)), 400, "method.dpo.hyperparameters.warmup")
    error(create(server, model=MODEL, training_file=pairs, method={"type": "dpo", "dpo": {"hyperparameters": {}},
                                                                   "supervised": {}}), 400, "method.supervised")
    error(create(server, model=MODEL, training_file=pairs, method=dpo(), hyperparameters={"n_epochs": 1}), 400,
          "hyperparameters")
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.create(model=MODEL, training_file=broken, method={"type": "dpo"})


def test_pause_and_resume_a_job_that_has_not_started(server, client, training_file):
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=training_file)
    with server.http() as http:
        paused = job_body(http.post(f"{JOBS}/{job.id}/pause"))
        assert paused["status"] == "queued"  # the spec has no `paused`: reported as queued (docs/decisions.md)
        assert server.app.state.tailor.jobs.get(job.id).status == "paused"
        assert job_body(http.post(f"{JOBS}/{job.id}/pause")) == paused  # pausing a paused job changes nothing
        events = http.get(f"{JOBS}/{job.id}/events").json()
        validate(events, "ListFineTuningJobEventsResponse")
        assert events["data"][0]["message"] == "Job paused before its files were checked"
        resumed = job_body(http.post(f"{JOBS}/{job.id}/resume"))
        assert resumed["status"] == "validating_files"  # back where it paused: its files are still to check
        error(http.post(f"{JOBS}/{job.id}/resume"), 400, "fine_tuning_job_id")  # not paused
    assert client.fine_tuning.jobs.pause(job.id).status == "queued"
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"  # a paused job is cancelled at once
    with server.http() as http:
        assert "cannot be paused" in error(http.post(f"{JOBS}/{job.id}/pause"), 400, "fine_tuning_job_id")["message"]
        error(http.post(f"{JOBS}/{job.id}/resume"), 400, "fine_tuning_job_id")
        for action in ("pause", "resume"):
            error(http.post(f"{JOBS}/ftjob-nope/{action}"), 404, "fine_tuning_job_id")
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.pause(job.id)


# -- training through the API, with the real worker ----------------------------------------------
def upload_and_create(client, n_examples: int, **hyperparameters) -> str:
    file_id = client.files.create(file=("train.jsonl", chat_jsonl(n_examples)), purpose="fine-tune").id
    hp = {"n_epochs": 1, "batch_size": 2, "learning_rate_multiplier": 2.0, "lora_rank": 4, **hyperparameters}
    return client.fine_tuning.jobs.create(model=MODEL, training_file=file_id, suffix="e2e",
                                          method={"type": "supervised", "supervised": {"hyperparameters": hp}}).id


def wait_for(live: LiveServer, job_id: str, done, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    with live.http() as http:
        while True:
            job = job_body(http.get(f"{JOBS}/{job_id}"))
            if done(job) or job["status"] in ("succeeded", "failed", "cancelled"):
                return job
            assert time.monotonic() < deadline, f"{job_id} still {job['status']} after {timeout}s"
            time.sleep(0.2)


def events_of(live: LiveServer, job_id: str) -> list[dict]:
    with live.http() as http:
        body = http.get(f"{JOBS}/{job_id}/events", params={"limit": 100}).json()
    validate(body, "ListFineTuningJobEventsResponse")
    return body["data"]


@needs_worker
def test_training_end_to_end(tmp_path):
    with live_server(Settings(home=make_home(tmp_path), threads=2, preload=False)) as live:
        client = live.client()
        job_id = upload_and_create(client, 12, n_epochs=2)
        job = wait_for(live, job_id, lambda j: False)
        assert job["status"] == "succeeded", job["error"]
        assert job["fine_tuned_model"] == f"ft:{MODEL}:e2e:{job_id}" and job["finished_at"] >= job["created_at"]
        assert job["trained_tokens"] and job["hyperparameters"]["n_epochs"] == 2
        events = events_of(live, job_id)
        assert any(e["type"] == "metrics" for e in events) and events[-1]["message"].startswith("Created")
        with live.http() as http:
            checkpoints = http.get(f"{JOBS}/{job_id}/checkpoints").json()
        validate(checkpoints, "ListFineTuningJobCheckpointsResponse")
        assert checkpoints["data"] and all(c["fine_tuning_job_id"] == job_id for c in checkpoints["data"])
        assert job["fine_tuned_model"] in [m.id for m in client.models.list()]
        with live.http() as http:
            res = http.post("/v1/chat/completions", json={
                "model": job["fine_tuned_model"], "max_tokens": 8, "temperature": 0,
                "messages": [{"role": "user", "content": "What is the capital of France?"}]})
        assert res.status_code == 200, res.text
        validate(res.json(), "CreateChatCompletionResponse")
        assert res.json()["model"] == job["fine_tuned_model"]
        # a fine-tuned model can be deleted, as on OpenAI (a base model cannot, over the API)
        with pytest.raises(openai.PermissionDeniedError):
            client.models.delete(MODEL)
        deleted = client.models.delete(job["fine_tuned_model"])
        assert (deleted.id, deleted.deleted) == (job["fine_tuned_model"], True)
        with live.http() as http:
            res = http.delete(f"/v1/models/{job['fine_tuned_model']}")
            assert res.status_code == 404
            validate(res.json(), "ErrorResponse")
            gone = http.post("/v1/chat/completions", json={"model": job["fine_tuned_model"], "max_tokens": 2,
                                                           "messages": [{"role": "user", "content": "Hi"}]})
            assert gone.status_code == 404  # never a fallback to the base
        assert job["fine_tuned_model"] not in [m.id for m in client.models.list()]


@needs_worker
def test_a_job_survives_a_server_restart(tmp_path):
    settings = Settings(home=make_home(tmp_path), threads=2, preload=False)
    with live_server(settings) as live:
        job_id = upload_and_create(live.client(), 40, n_epochs=5, batch_size=1)  # long enough to stop mid-run
        wait_for(live, job_id, lambda j: j["status"] == "running" and live.app.state.tailor.jobs.checkpoints(job_id))
    # the server stopped mid-training: the worker checkpointed and put the job back in the queue
    stopped = live.app.state.tailor.jobs.get(job_id)
    assert stopped.status == "queued", stopped
    steps_before = max(c.step_number for c in live.app.state.tailor.jobs.checkpoints(job_id))
    with live_server(settings) as live:
        job = wait_for(live, job_id, lambda j: False)
        assert job["status"] == "succeeded", job["error"]
        steps = [c.step_number for c in live.app.state.tailor.jobs.checkpoints(job_id)]
        assert max(steps) > steps_before
        assert live.client().models.retrieve(job["fine_tuned_model"]).id == job["fine_tuned_model"]


@needs_worker
def test_a_job_survives_kill_9_of_the_server_and_its_worker(tmp_path):
    """A crash: the server and its training worker both get SIGKILL mid-training (no checkpoint on the way out).
    A new server on the same home sees the job's lease is dead, queues it again, and it resumes from its last
    checkpoint to the same kind of result: one trainer at a time, nothing trained from scratch."""
    import os
    import signal
    import sqlite3

    home = make_home(tmp_path)
    with served_process(home) as (proc, live):
        job_id = upload_and_create(live.client(), 40, n_epochs=5, batch_size=1)
        with live.http() as http:
            wait_for(live, job_id, lambda j: j["status"] == "running" and http.get(
                f"{JOBS}/{job_id}/checkpoints").json()["data"])
            before = max(c["step_number"] for c in http.get(f"{JOBS}/{job_id}/checkpoints").json()["data"])
        with sqlite3.connect(home / "tailor.db") as db:
            worker = db.execute("SELECT worker_pid FROM fine_tuning_jobs WHERE id = ?", (job_id,)).fetchone()[0]
        os.kill(worker, signal.SIGKILL)
        kill9(proc)
    with served_process(home) as (proc, live):
        job = wait_for(live, job_id, lambda j: False)
        assert job["status"] == "succeeded", job["error"]
        with live.http() as http:
            steps = [c["step_number"] for c in http.get(f"{JOBS}/{job_id}/checkpoints").json()["data"]]
        assert max(steps) > before
        with sqlite3.connect(home / "tailor.db") as db:  # among many metrics events: read them all
            messages = [m for (m,) in db.execute("SELECT message FROM fine_tuning_events WHERE job_id = ?", (job_id,))]
        assert any("queued again and resumes from its last checkpoint" in m for m in messages)
        assert live.client().models.retrieve(job["fine_tuned_model"]).id == job["fine_tuned_model"]


@needs_worker
def test_cancel_a_running_job(tmp_path):
    with live_server(Settings(home=make_home(tmp_path), threads=2, preload=False)) as live:
        client = live.client()
        job_id = upload_and_create(client, 40, n_epochs=10, batch_size=1)
        wait_for(live, job_id, lambda j: j["status"] == "running")
        assert client.fine_tuning.jobs.cancel(job_id).status in ("running", "cancelled")
        job = wait_for(live, job_id, lambda j: False, timeout=120)
        assert job["status"] == "cancelled" and job["fine_tuned_model"] is None
        pid = live.app.state.tailor.jobs.get(job_id).worker_pid
        assert pid is None
        with pytest.raises(openai.BadRequestError):
            client.fine_tuning.jobs.cancel(job_id)


def create_dpo(client, train: bytes, valid: bytes | None = None, **hyperparameters) -> str:
    train_id = client.files.create(file=("pairs.jsonl", train), purpose="fine-tune").id
    valid_id = client.files.create(file=("held.jsonl", valid), purpose="fine-tune").id if valid else None
    hp = {"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 5.0, "beta": 0.1, "lora_rank": 4,
          **hyperparameters}
    kw = {"validation_file": valid_id} if valid_id else {}
    return client.fine_tuning.jobs.create(model=MODEL, training_file=train_id, suffix="dpo", seed=5,
                                          method=dpo(**hp), **kw).id


@needs_worker
def test_a_dpo_job_moves_the_held_out_preference(tmp_path):
    """DPO over the API on 16 pairs the tiny model gets wrong; `tailor eval`'s preference pass on 8 held-out pairs
    (other prompts) then finds the tuned adapter preferring the preferred answers its base did not."""
    from tailorlm.tune.eval_report import write_report
    from tailorlm.tune.evaluate import evaluate

    settings = Settings(home=make_home(tmp_path), threads=2, preload=False)
    held = tmp_path / "held.jsonl"
    held.write_bytes(pairs_jsonl(8, start=100))
    with live_server(settings) as live:
        client = live.client()
        job_id = create_dpo(client, pairs_jsonl(16), held.read_bytes())
        job = wait_for(live, job_id, lambda j: False)
        assert job["status"] == "succeeded", job["error"]
        assert job["method"]["dpo"]["hyperparameters"] == {"beta": 0.1, "n_epochs": 3, "batch_size": 4,
                                                           "learning_rate_multiplier": 5.0}
        events = events_of(live, job_id)[::-1]  # oldest first
        steps = [e["data"] for e in events if e["type"] == "metrics" and "train_loss" in e["data"]]
        assert len(steps) == 12 and steps[0]["train_loss"] == pytest.approx(0.6931, abs=1e-3)  # log 2 at the start
        assert {"train_reward_accuracy", "train_reward_margin"} <= set(steps[-1])
        valid = [e["data"] for e in events if e["type"] == "metrics" and "valid_loss" in e["data"]]
        assert len(valid) == 3 and valid[-1]["valid_reward_accuracy"] == 1.0
        with live.http() as http:
            checkpoints = http.get(f"{JOBS}/{job_id}/checkpoints").json()
        validate(checkpoints, "ListFineTuningJobCheckpointsResponse")
        assert "train_reward_margin" in checkpoints["data"][0]["metrics"]
        with live.http() as http:
            res = http.post("/v1/chat/completions", json={
                "model": job["fine_tuned_model"], "max_tokens": 4, "temperature": 0,
                "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello 7?"}]})
        assert res.status_code == 200, res.text
        validate(res.json(), "CreateChatCompletionResponse")
    run = evaluate([MODEL, job["fine_tuned_model"]], held, settings=settings)
    base, tuned = run.preference
    # measured: win rate 0% -> 100%, mean margin -5.6 -> +26.9 nats, reward accuracy 100%, reward margin +3.26
    assert (base.win_rate, tuned.win_rate) == (0.0, 1.0), (base, tuned)
    assert base.mean_margin < 0 < tuned.mean_margin
    assert tuned.reward_accuracy == 1.0 and tuned.reward_margin > 0 and tuned.beta == 0.1
    assert base.reward_accuracy is None
    written = write_report(run, tmp_path / "report")
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| tiny-chat | 8 | 0.0% |" in report and "| 100.0% |" in report and len(written) == 3


@needs_worker
def test_pause_a_running_job_then_resume_it_from_its_checkpoint(tmp_path):
    from tailorlm.tune.checkpoint import list_steps
    from tailorlm.tune.metrics import read_metrics

    settings = Settings(home=make_home(tmp_path), threads=2, preload=False)
    with live_server(settings) as live:
        client, jobs = live.client(), live.app.state.tailor.jobs
        job_id = create_dpo(client, pairs_jsonl(40), n_epochs=4, batch_size=1)  # 160 steps
        wait_for(live, job_id, lambda j: j["status"] == "running" and jobs.checkpoints(job_id))
        assert client.fine_tuning.jobs.pause(job_id).status in ("running", "queued")
        deadline = time.monotonic() + 120
        while jobs.get(job_id).status != "paused":
            assert time.monotonic() < deadline and jobs.get(job_id).status == "running", jobs.get(job_id)
            time.sleep(0.1)
        message = next(e["message"] for e in events_of(live, job_id) if e["message"].startswith("Job paused"))
        at = int(message.split("step ")[1].split(";")[0])
        folder = settings.jobs_dir / job_id
        assert 0 < at < 160 and list_steps(folder / "checkpoints")[-1] == at  # stopped at a step, checkpoint kept
        assert job_body_of(live, job_id)["status"] == "queued"
        time.sleep(1.0)  # a paused job stays where it is: nothing trains it
        assert jobs.get(job_id).status == "paused" and len(read_metrics(folder / "metrics.csv")) == at
        assert client.fine_tuning.jobs.resume(job_id).status == "queued"
        job = wait_for(live, job_id, lambda j: False)
        assert job["status"] == "succeeded", job["error"]
        assert any(e.message.startswith(f"Resuming from step {at}:") for e in jobs.events(job_id))  # all 160+
        steps = [r["step"] for r in read_metrics(folder / "metrics.csv") if r["train_loss"] is not None]
        assert steps == list(range(1, 161))  # none lost, none trained twice
        with pytest.raises(openai.BadRequestError):
            client.fine_tuning.jobs.pause(job_id)


def job_body_of(live: LiveServer, job_id: str) -> dict:
    with live.http() as http:
        return job_body(http.get(f"{JOBS}/{job_id}"))
