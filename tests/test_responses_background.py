"""Background responses end to end (`background: true`): answered `queued` at once, polled to their end, cancelled,
streamed and resumed after any sequence number, taken up by a restarted server. Real HTTP on loopback, the
official `openai` client, every body and event validated against the vendored OpenAI spec."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import openai
import pytest

from tests.server_harness import live_server
from tests.spec import validate, validate_event
from tests.test_responses_api import FIXED, MODEL, client, home, server, tiny_home, tiny_settings  # noqa: F401

LONG = {"max_output_tokens": 1500, "temperature": 0, "ignore_eos": True}  # seconds of work on the tiny model


def create(server, **body) -> dict:
    """A raw background POST /v1/responses: answered at once, `queued`, valid against the spec."""
    with server.http() as http:
        res = http.post("/v1/responses", json={"model": MODEL, "input": "Tell me a story.", "background": True,
                                               **body})
    assert res.status_code == 200, res.text
    validate(res.json(), "Response")
    return res.json()


def get(server, response_id: str) -> dict:
    with server.http() as http:
        res = http.get(f"/v1/responses/{response_id}")
    assert res.status_code == 200, res.text
    validate(res.json(), "Response")
    return res.json()


def poll(server, response_id: str, until=("completed", "incomplete", "failed", "cancelled"), timeout=120) -> dict:
    deadline = time.monotonic() + timeout
    while (body := get(server, response_id))["status"] not in until:
        assert time.monotonic() < deadline, (response_id, body["status"])
        time.sleep(0.05)
    return body


def read_events(lines, count: int | None = None) -> list[dict]:
    """The events of an open SSE response's lines (the next `count` of them, or all), each valid against the
    spec."""
    out: list[dict] = []
    kind = None
    for line in lines:
        if line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: "):
            event = json.loads(line.removeprefix("data: "))
            assert event["type"] == kind
            validate_event(event)
            out.append(event)
            if count is not None and len(out) == count:
                break
    return out


def stream_again(server, response_id: str, **params) -> list[dict]:
    with server.http() as http, http.stream("GET", f"/v1/responses/{response_id}",
                                            params={"stream": "true", **params}) as res:
        assert res.status_code == 200, res.read()
        return read_events(res.iter_lines())


def text_of(events: list[dict]) -> str:
    return "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")


def test_a_background_response_polls_to_the_foreground_answer(server, client) -> None:
    body = create(server, input="Hello there", max_output_tokens=12, **{"temperature": 0, "ignore_eos": True})
    assert body["status"] == "queued" and body["background"] is True and body["output"] == []
    assert "usage" not in body and body["error"] is None
    done = poll(server, body["id"])
    assert done["status"] == "incomplete" and done["usage"]["output_tokens"] == 12  # cut at max_output_tokens
    foreground = client.responses.create(model=MODEL, input="Hello there", max_output_tokens=12, **FIXED)
    assert foreground.background is False
    assert done["output"][0]["content"][0]["text"] == foreground.output_text
    polled = client.responses.retrieve(body["id"])
    assert polled.status == "incomplete" and polled.output_text == foreground.output_text
    listed = client.responses.input_items.list(body["id"])
    assert [i.type for i in listed.data] == ["message"]
    answer = client.responses.create(model=MODEL, input="And then?", previous_response_id=body["id"],
                                     max_output_tokens=4, **FIXED)  # continues an ended background response
    assert answer.usage.input_tokens > done["usage"]["input_tokens"] + 12


def test_the_official_client_creates_polls_and_cancels(server, client) -> None:
    started = client.responses.create(model=MODEL, input="Tell me a story.", background=True, max_output_tokens=1500,
                                      temperature=0, extra_body={"ignore_eos": True})
    assert started.status == "queued" and started.background is True
    assert poll(server, started.id, until=("in_progress",))["status"] == "in_progress"
    cancelled = client.responses.cancel(started.id)
    assert cancelled.status == "cancelled" and cancelled.id == started.id
    body = get(server, started.id)
    assert body["status"] == "cancelled" and body["usage"]["output_tokens"] < 1500
    assert client.responses.cancel(started.id).status == "cancelled"  # again: idempotent, as OpenAI's
    time.sleep(0.3)
    assert get(server, started.id) == body  # nothing ran on after the cancel


def test_cancel_errors_are_openai_errors(server, client) -> None:
    foreground = client.responses.create(model=MODEL, input="Hi", max_output_tokens=2, **FIXED)
    finished = poll(server, create(server, max_output_tokens=2, temperature=0)["id"])
    with server.http() as http:
        for response_id, status, says in [(foreground.id, 400, "synchronous"),
                                          (finished["id"], 400, f"a {finished['status']} response"),
                                          ("resp_nope", 404, "not found")]:
            res = http.post(f"/v1/responses/{response_id}/cancel")
            assert res.status_code == status, res.text
            validate(res.json(), "ErrorResponse")
            assert says in res.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError):
        client.responses.cancel(foreground.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.cancel("resp_nope")


def test_bad_background_requests_are_400(server, client) -> None:
    with server.http() as http:
        no_store = http.post("/v1/responses", json={"model": MODEL, "input": "Hi", "background": True,
                                                    "store": False})
        assert no_store.status_code == 400 and no_store.json()["error"]["param"] == "background"
        validate(no_store.json(), "ErrorResponse")
        bad = http.post("/v1/responses", json={"model": MODEL, "input": "Hi", "background": True, "temperature": 9})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "temperature"  # checked before `queued`
        unknown = http.post("/v1/responses", json={"model": "nope", "input": "Hi", "background": True})
        assert unknown.status_code == 404
        plain = client.responses.create(model=MODEL, input="Hi", max_output_tokens=2, **FIXED)
        not_streamed = poll(server, create(server, max_output_tokens=2, temperature=0)["id"])
        for response_id in (plain.id, not_streamed["id"]):  # only a streamed background response streams again
            res = http.get(f"/v1/responses/{response_id}", params={"stream": "true"})
            assert res.status_code == 400 and res.json()["error"]["param"] == "stream", res.text
        running = create(server, **LONG)
        follow = http.post("/v1/responses", json={"model": MODEL, "input": "More", "previous_response_id":
                                                  running["id"]})
        assert follow.status_code == 400 and follow.json()["error"]["param"] == "previous_response_id"
        gone = http.delete(f"/v1/responses/{running['id']}")  # deleting a running one stops it first
        assert gone.status_code == 200 and gone.json()["deleted"] is True
        assert http.get(f"/v1/responses/{running['id']}").status_code == 404


def test_a_background_stream_resumes_after_any_sequence_number(server, client) -> None:
    with server.http() as http, http.stream("POST", "/v1/responses", json={
            "model": MODEL, "input": "Tell me a story.", "background": True, "stream": True, "max_output_tokens": 200,
            "temperature": 0, "ignore_eos": True}) as res:
        assert res.status_code == 200, res.read()
        seen = read_events(res.iter_lines(), count=8)  # then the client goes away: the run goes on
    assert [e["type"] for e in seen[:4]] == ["response.created", "response.queued", "response.in_progress",
                                             "response.output_item.added"]
    assert [e["sequence_number"] for e in seen] == list(range(8))
    assert seen[0]["response"]["status"] == "queued" and seen[0]["response"]["background"] is True
    response_id = seen[0]["response"]["id"]
    rest = stream_again(server, response_id, starting_after=seen[-1]["sequence_number"])  # live, or after
    whole = seen + rest
    assert [e["sequence_number"] for e in whole] == list(range(len(whole)))
    assert whole[-1]["type"] == "response.incomplete"
    final = poll(server, response_id)
    assert whole[-1]["response"] == final
    assert text_of(whole) == final["output"][0]["content"][0]["text"]
    assert stream_again(server, response_id) == whole  # from the start, after the end: the same events
    assert stream_again(server, response_id, starting_after=len(whole) - 2) == whole[-1:]
    events = list(client.responses.retrieve(response_id, stream=True, starting_after=4))
    assert [e.sequence_number for e in events] == list(range(5, len(whole)))
    assert events[-1].type == "response.incomplete" and events[-1].response.output_text == text_of(whole)


def test_the_official_client_streams_in_the_background_and_resumes(client) -> None:
    """docs/api.md's example: a background stream left after 10 events, picked up after the last one seen."""
    stream = client.responses.create(model=MODEL, input="Tell me a story.", background=True, stream=True,
                                     max_output_tokens=100, temperature=0, extra_body={"ignore_eos": True})
    for event in stream:
        if event.type == "response.created":
            response_id = event.response.id
        last = event.sequence_number
        if last == 10:
            break
    stream.close()
    rest = list(client.responses.retrieve(response_id, stream=True, starting_after=last))
    assert rest[0].sequence_number == 11 and rest[-1].type == "response.incomplete"
    assert rest[-1].response.usage.output_tokens == 100 and rest[-1].response.background is True


def test_cancelling_a_streamed_background_response_ends_its_streams(server, client) -> None:
    with server.http() as http, http.stream("POST", "/v1/responses", json={
            "model": MODEL, "input": "Tell me a story.", "background": True, "stream": True, **LONG}) as res:
        lines = res.iter_lines()
        head = read_events(lines, count=5)
        response_id = head[0]["response"]["id"]
        assert client.responses.cancel(response_id).status == "cancelled"
        tail = read_events(lines)  # what was stored before the cancel, then the stream ends
    events = stream_again(server, response_id)
    assert events == head + tail and events[-1]["type"] != "response.completed"
    assert get(server, response_id)["status"] == "cancelled"


def test_a_restarted_server_takes_up_what_was_left(tmp_path: Path) -> None:
    """The server stops (graceful_timeout 0) while two background responses run: the plain one runs again from
    its stored request and completes; the streamed one, whose events a client had seen, fails, and its stream
    ends with response.failed after the last event it had sent."""
    settings = tiny_settings(tiny_home(tmp_path)).model_copy(update={"graceful_timeout": 0})
    with live_server(settings) as live:
        plain = create(live, **LONG)
        with live.http() as http, http.stream("POST", "/v1/responses", json={
                "model": MODEL, "input": "Tell me a story.", "background": True, "stream": True, **LONG}) as res:
            seen = read_events(res.iter_lines(), count=6)
        streamed = seen[0]["response"]["id"]
        poll(live, plain["id"], until=("in_progress",))
    with sqlite3.connect(settings.db_path) as db:
        left = dict(db.execute("SELECT id, json_extract(body, '$.status') FROM responses").fetchall())
    assert left == {plain["id"]: "in_progress", streamed: "in_progress"}
    with live_server(settings) as live:
        done = poll(live, plain["id"])
        assert done["status"] == "incomplete" and done["usage"]["output_tokens"] == 1500
        failed = poll(live, streamed)
        assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"
        assert "stopped" in failed["error"]["message"]
        rest = stream_again(live, streamed, starting_after=seen[-1]["sequence_number"])
        assert rest[-1]["type"] == "response.failed" and rest[-1]["response"]["status"] == "failed"
        numbers = [e["sequence_number"] for e in stream_again(live, streamed)]
        assert numbers == list(range(len(numbers))) and len(numbers) > len(seen)


def test_background_responses_survive_kill_9_of_the_server(tmp_path: Path) -> None:
    """SIGKILL (no shutdown, no flush) while two background responses run: everything a client was sent had been
    stored first, so a new server on the same home completes the plain one and ends the streamed one's stream,
    after exactly the events its client saw, with response.failed."""
    from tests.server_harness import kill9, served_process

    home = tiny_home(tmp_path, context=32768)
    endless = {**LONG, "max_output_tokens": 32000}  # still running at the kill, however fast the process
    with served_process(home) as (proc, live):
        with live.http() as http, http.stream("POST", "/v1/responses", json={
                "model": MODEL, "input": "Tell me a story.", "background": True, "stream": True, **endless}) as res:
            seen = read_events(res.iter_lines(), count=20)
            plain = create(live, **LONG)
            kill9(proc)
    streamed = seen[0]["response"]["id"]
    with sqlite3.connect(home / "tailor.db") as db:
        left = dict(db.execute("SELECT id, json_extract(body, '$.status') FROM responses").fetchall())
    assert left[streamed] == "in_progress" and left[plain["id"]] in ("queued", "in_progress")
    with served_process(home) as (proc, live):
        assert poll(live, plain["id"])["usage"]["output_tokens"] == 1500
        assert poll(live, streamed)["status"] == "failed"
        events = stream_again(live, streamed)
        assert events[:len(seen)] == seen and events[-1]["type"] == "response.failed"
        assert [e["sequence_number"] for e in events] == list(range(len(events)))
