"""/v1/batches end to end: real HTTP, the official `openai` client, bodies validated against the OpenAI spec; the
batches run in the server on a tiny model (chat) and the packaged embedding model, and survive a restart."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from tailorlm.config import Settings
from tailorlm.embeddings import packaged_folder
from tailorlm.errors import ModelNotFoundError
from tests.server_harness import LiveServer, kill9, live_server, served_process
from tests.spec import validate
from tests.test_fine_tuning_api import MODEL, make_home

EMBED = "all-minilm-l6-v2"


def chat_line(i: int, **body) -> dict:
    return {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": MODEL, "messages": [{"role": "user", "content": f"Tell me about number {i}."}],
                     "temperature": 0, "max_tokens": 8, **body}}


def jsonl(rows: list) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with live_server(Settings(home=make_home(tmp_path_factory.mktemp("batches")), preload=False)) as live:
        yield live


@pytest.fixture(scope="module")
def client(server):
    return server.client()


def submit(server: LiveServer, rows: list, endpoint: str = "/v1/chat/completions", **kw) -> dict:
    client = server.client()
    file = client.files.create(file=("batch.jsonl", jsonl(rows)), purpose="batch")
    batch = client.batches.create(input_file_id=file.id, endpoint=endpoint, completion_window="24h", **kw)
    return batch.model_dump(exclude_none=True)


def get(server: LiveServer, batch_id: str) -> dict:
    with server.http() as http:
        body = http.get(f"/v1/batches/{batch_id}").json()
    validate(body, "Batch")
    return body


def wait(server: LiveServer, batch_id: str, until=("completed", "failed", "cancelled"), timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while (body := get(server, batch_id))["status"] not in until:
        assert time.monotonic() < deadline, (body["status"], body["request_counts"])
        time.sleep(0.05)
    return body


def lines_of(server: LiveServer, file_id: str) -> list[dict]:
    client = server.client()
    assert client.files.retrieve(file_id).purpose == "batch_output"
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def test_chat_batch_of_50_matches_the_endpoint(server, client):
    rows = [chat_line(i) for i in range(50)]
    created = submit(server, rows, metadata={"job": "nightly"})
    validate(created, "Batch")
    assert created["status"] in ("in_progress", "finalizing", "completed") and created["request_counts"]["total"] == 50
    done = wait(server, created["id"])
    assert done["status"] == "completed", done
    assert done["request_counts"] == {"total": 50, "completed": 50, "failed": 0}
    assert done["metadata"] == {"job": "nightly"} and "error_file_id" not in done
    for stamp in ("in_progress_at", "finalizing_at", "completed_at", "expires_at"):
        assert done[stamp] >= done["created_at"]
    out = lines_of(server, done["output_file_id"])
    assert [o["custom_id"] for o in out] == [f"req-{i}" for i in range(50)]
    for row, o in zip(rows[::10], out[::10]):  # a few against the endpoint itself, at temperature 0
        assert o["error"] is None and o["response"]["status_code"] == 200 and o["id"].startswith("batch_req_")
        validate(o["response"]["body"], "CreateChatCompletionResponse")
        direct = client.chat.completions.create(**row["body"])
        assert o["response"]["body"]["choices"][0]["message"]["content"] == direct.choices[0].message.content
    inputs = sum(o["response"]["body"]["usage"]["prompt_tokens"] for o in out)
    outputs = sum(o["response"]["body"]["usage"]["completion_tokens"] for o in out)
    assert done["usage"] == {"input_tokens": inputs, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                             "output_tokens": outputs, "output_tokens_details": {"reasoning_tokens": 0},
                             "total_tokens": inputs + outputs}
    assert 0 < outputs <= 50 * 8
    assert client.batches.retrieve(done["id"]).usage.total_tokens == inputs + outputs


def test_embeddings_batch_matches_the_endpoint(server, client):
    try:
        packaged_folder(EMBED)
    except ModelNotFoundError as exc:
        pytest.skip(str(exc))
    texts = [f"sentence number {i}" for i in range(6)]
    rows = [{"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
             "body": {"model": EMBED, "input": t, "encoding_format": "float"}} for i, t in enumerate(texts)]
    done = wait(server, submit(server, rows, "/v1/embeddings")["id"])
    assert done["request_counts"] == {"total": 6, "completed": 6, "failed": 0}
    out = lines_of(server, done["output_file_id"])
    assert [o["custom_id"] for o in out] == [r["custom_id"] for r in rows]
    direct = client.embeddings.create(model=EMBED, input=texts, encoding_format="float")
    for o, d in zip(out, direct.data):
        validate(o["response"]["body"], "CreateEmbeddingResponse")
        assert np.allclose(o["response"]["body"]["data"][0]["embedding"], d.embedding, atol=1e-5)
    inputs = sum(o["response"]["body"]["usage"]["prompt_tokens"] for o in out)
    assert (done["usage"]["input_tokens"], done["usage"]["output_tokens"], done["usage"]["total_tokens"]) == (
        inputs, 0, inputs) and inputs > 0


def test_responses_batch_sums_input_and_output_tokens(server):
    rows = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/responses",
             "body": {"model": MODEL, "input": f"Tell me about number {i}.", "max_output_tokens": 6,
                      "temperature": 0, "ignore_eos": True}} for i in range(3)]
    done = wait(server, submit(server, rows, "/v1/responses")["id"])
    assert done["status"] == "completed" and done["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
    out = lines_of(server, done["output_file_id"])
    for o in out:
        validate(o["response"]["body"], "Response")
    inputs = sum(o["response"]["body"]["usage"]["input_tokens"] for o in out)
    assert (done["usage"]["input_tokens"], done["usage"]["output_tokens"]) == (inputs, 3 * 6)


def test_a_bad_file_fails_the_batch_naming_each_line(server):
    rows = [chat_line(0), chat_line(0), "{not json", {**chat_line(3), "url": "/v1/moderations"},
            {**chat_line(4), "url": "/v1/embeddings"}, {**chat_line(5), "method": "GET"}, chat_line(6)]
    created = submit(server, rows)
    validate(created, "Batch")
    assert created["status"] == "failed" and created["failed_at"] >= created["created_at"]
    errors = created["errors"]["data"]
    assert [(e["line"], e["code"], e.get("param")) for e in errors] == [
        (2, "duplicate_custom_id", "custom_id"), (3, "invalid_json_line", None), (4, "invalid_url", "url"),
        (5, "mismatched_endpoint", "url"), (6, "invalid_method", "method")]
    assert created["request_counts"]["total"] == 0 and "output_file_id" not in created
    assert get(server, created["id"])["status"] == "failed"


def test_bad_requests_are_openai_errors(server, client):
    good = client.files.create(file=("b.jsonl", jsonl([chat_line(0)])), purpose="batch").id
    tune = client.files.create(file=("t.jsonl", jsonl([chat_line(0)])), purpose="fine-tune").id
    with server.http() as http:
        for body, status, param in [
            ({"input_file_id": "file-nope", "endpoint": "/v1/chat/completions", "completion_window": "24h"}, 404,
             "file_id"),
            ({"input_file_id": good, "endpoint": "/v1/chat/completions", "completion_window": "1h"}, 400,
             "completion_window"),
            ({"input_file_id": good, "endpoint": "/v1/moderations", "completion_window": "24h"}, 400, "endpoint"),
            ({"input_file_id": tune, "endpoint": "/v1/chat/completions", "completion_window": "24h"}, 400,
             "input_file_id"),
        ]:
            res = http.post("/v1/batches", json=body)
            assert res.status_code == status, res.text
            validate(res.json(), "ErrorResponse")
            assert res.json()["error"]["param"] == param
        assert http.get("/v1/batches/batch_nope").status_code == 404
        assert http.post("/v1/batches/batch_nope/cancel").status_code == 404


def test_an_invalid_body_fails_its_line_only(server):
    rows = [chat_line(0), chat_line(1, temperature=9), chat_line(2, stream=True), chat_line(3, background=True)]
    done = wait(server, submit(server, rows)["id"])
    assert done["status"] == "completed" and done["request_counts"] == {"total": 4, "completed": 1, "failed": 3}
    assert [o["custom_id"] for o in lines_of(server, done["output_file_id"])] == ["req-0"]
    bad = lines_of(server, done["error_file_id"])
    assert [(b["custom_id"], b["response"]["status_code"], b["response"]["body"]["error"]["param"])
            for b in bad] == [("req-1", 400, "temperature"), ("req-2", 400, "stream"), ("req-3", 400, "background")]
    for b in bad:
        validate(b["response"]["body"], "ErrorResponse")
        assert b["error"]["code"] == "invalid_value" or b["error"]["code"] == "invalid_request"


def test_list_pages_newest_first(server, client):
    ids = [submit(server, [chat_line(0)])["id"] for _ in range(3)]
    with server.http() as http:
        first = http.get("/v1/batches", params={"limit": 2}).json()
        validate(first, "ListBatchesResponse")
        assert [b["id"] for b in first["data"]] == ids[::-1][:2] and first["has_more"] is True
        rest = http.get("/v1/batches", params={"limit": 2, "after": first["last_id"]}).json()
        assert rest["data"][0]["id"] == ids[0]
        assert http.get("/v1/batches", params={"after": "batch_nope"}).status_code == 404
    assert [b.id for b in client.batches.list(limit=3).data] == ids[::-1]
    for i in ids:
        wait(server, i)


def slow_rows(n: int) -> list[dict]:
    return [chat_line(i, max_tokens=64, ignore_eos=True) for i in range(n)]


def test_cancel_stops_and_keeps_what_completed(server, client):
    created = submit(server, slow_rows(40))
    time.sleep(0.5)
    cancelling = client.batches.cancel(created["id"]).model_dump(exclude_none=True)
    validate(cancelling, "Batch")
    assert cancelling["status"] in ("cancelling", "cancelled") and "cancelling_at" in cancelling
    done = wait(server, created["id"], until=("cancelled",))
    counts = done["request_counts"]
    assert counts["completed"] < 40 and done["cancelled_at"] >= done["cancelling_at"]
    if counts["completed"]:
        assert len(lines_of(server, done["output_file_id"])) == counts["completed"]
    with server.http() as http:  # a finished batch cannot be cancelled
        assert http.post(f"/v1/batches/{created['id']}/cancel").status_code == 400


def test_a_batch_past_its_window_expires_keeping_what_finished(tmp_path):
    """completion_window "24h" lasts `batch_window_s` (here 4 s): the fast first lines finish, the line in flight
    when the window closes is dropped, and the batch ends `expired`: answered lines in the output file, every other
    line in the error file as batch_expired, as OpenAI reports them."""
    settings = Settings(home=make_home(tmp_path), preload=False, batch_window_s=4)
    rows = [chat_line(i) for i in range(3)] + slow_rows(1003)[3:]  # far more than 4 s of work
    with live_server(settings) as live:
        created = submit(live, rows)
        assert created["expires_at"] - created["created_at"] == 4
        done = wait(live, created["id"], until=("expired", "completed"), timeout=60)
        assert done["status"] == "expired", done["request_counts"]
        assert done["expired_at"] >= done["expires_at"] and done["finalizing_at"] <= done["expired_at"]
        assert "completed_at" not in done
        counts = done["request_counts"]
        assert counts["total"] == 1003 and counts["completed"] + counts["failed"] == 1003
        assert 3 <= counts["completed"] < 1003
        kept = lines_of(live, done["output_file_id"])
        expired = lines_of(live, done["error_file_id"])
        assert [o["custom_id"] for o in kept] == [f"req-{i}" for i in range(counts["completed"])]
        assert [o["custom_id"] for o in expired] == [f"req-{i}" for i in range(counts["completed"], 1003)]
        for o in expired:
            assert o["response"] is None and o["id"].startswith("batch_req_")
            assert o["error"] == {"code": "batch_expired", "message": "This request could not be executed before "
                                  "the completion window expired."}
        assert done["usage"]["output_tokens"] == sum(o["response"]["body"]["usage"]["completion_tokens"]
                                                     for o in kept)
        with live.http() as http:  # an expired batch has ended: it cannot be cancelled
            assert http.post(f"/v1/batches/{created['id']}/cancel").status_code == 400
        assert live.client().batches.retrieve(created["id"]).status == "expired"


def test_a_restarted_server_resumes_and_runs_no_line_twice(tmp_path):
    settings = Settings(home=make_home(tmp_path), preload=False)
    with live_server(settings) as live:
        batch_id = submit(live, slow_rows(40))["id"]
        deadline = time.monotonic() + 60
        while get(live, batch_id)["request_counts"]["completed"] < 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    with sqlite3.connect(settings.db_path) as db:  # what had completed when the server stopped
        before = dict(db.execute("SELECT custom_id, id FROM batch_lines WHERE batch_id = ? AND done_at IS NOT NULL",
                                 (batch_id,)).fetchall())
    stopped = get_status(settings.db_path, batch_id)
    assert 3 <= len(before) < 40 and stopped == "in_progress"
    with live_server(settings) as live:
        done = wait(live, batch_id)
        assert done["status"] == "completed" and done["request_counts"] == {"total": 40, "completed": 40,
                                                                             "failed": 0}
        out = lines_of(live, done["output_file_id"])
    assert sorted(o["custom_id"] for o in out) == sorted(f"req-{i}" for i in range(40))
    assert {o["custom_id"]: o["id"] for o in out if o["custom_id"] in before} == before  # not run again


def get_status(db_path: Path, batch_id: str) -> str:
    with sqlite3.connect(db_path) as db:
        return db.execute("SELECT status FROM batches WHERE id = ?", (batch_id,)).fetchone()[0]


def test_a_batch_survives_kill_9_of_the_server(tmp_path):
    """The server process is killed (SIGKILL: no shutdown, no flush) mid-batch; a new one on the same home
    finishes the batch of 50, every custom_id answered exactly once, lines done before the kill not run again."""
    home = make_home(tmp_path)
    with served_process(home) as (proc, live):
        batch_id = submit(live, slow_rows(50))["id"]
        deadline = time.monotonic() + 60
        while get(live, batch_id)["request_counts"]["completed"] < 5:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        kill9(proc)
    db_path = home / "tailor.db"
    with sqlite3.connect(db_path) as db:
        before = dict(db.execute("SELECT custom_id, id FROM batch_lines WHERE batch_id = ? AND done_at IS NOT NULL",
                                 (batch_id,)).fetchall())
    assert 5 <= len(before) < 50 and get_status(db_path, batch_id) == "in_progress"
    with served_process(home) as (proc, live):
        done = wait(live, batch_id, timeout=120)
        assert done["status"] == "completed" and done["request_counts"] == {"total": 50, "completed": 50, "failed": 0}
        out = lines_of(live, done["output_file_id"])
    assert sorted(o["custom_id"] for o in out) == sorted(f"req-{i}" for i in range(50))  # each exactly once
    assert {o["custom_id"]: o["id"] for o in out if o["custom_id"] in before} == before  # not run again
