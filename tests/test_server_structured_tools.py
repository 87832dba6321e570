"""Structured output and tool calls end to end: real HTTP on loopback, the official `openai` client,
bodies validated against the official OpenAI spec."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from tests import server_harness as harness
from tests.spec import validate
from tests.test_chat_structured import PERSON, SCHEMA_FORMAT
from tests.test_chat_tools import ADD, WEATHER

pytestmark = pytest.mark.slow
MODEL = "smollm2-135m-instruct"
WEATHER_Q = [{"role": "user", "content": "What is the weather in Paris?"}]
SCHEMAS = {"get_weather": WEATHER["function"]["parameters"], "add": ADD["function"]["parameters"]}
NAMED_ADD = {"type": "function", "function": {"name": "add"}}


@pytest.fixture(scope="module")
def server(default_server):
    return default_server


@pytest.fixture(scope="module")
def client(server):
    return server.client()


def post(server, **body) -> dict:
    with server.http() as http:
        res = http.post("/v1/chat/completions", json={"model": MODEL, "temperature": 0, **body})
    assert res.status_code == 200, res.text
    validate(res.json(), "CreateChatCompletionResponse")
    return res.json()


def stream_chunks(server, **body) -> list[dict]:
    """Raw SSE chunks of a streamed request, each validated against the spec."""
    return harness.stream_chunks(server, {"model": MODEL, "temperature": 0, **body})


def check_calls(calls, names: set[str]) -> None:
    assert calls
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_") and call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_response_format_json_schema(server, client) -> None:
    body = post(server, messages=[{"role": "user", "content": "Describe a person."}],
                response_format=SCHEMA_FORMAT, max_tokens=40)
    jsonschema.validate(json.loads(body["choices"][0]["message"]["content"]), PERSON)
    out = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "A person, please."}],
                                         response_format=SCHEMA_FORMAT, temperature=1.0, seed=5, max_tokens=40)
    assert out.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(out.choices[0].message.content), PERSON)


def test_named_tool_choice(server, client) -> None:
    body = post(server, messages=WEATHER_Q, tools=[WEATHER, ADD], tool_choice=NAMED_ADD, max_tokens=48)
    assert body["choices"][0]["message"]["content"] is None
    out = client.chat.completions.create(model=MODEL, messages=WEATHER_Q, tools=[WEATHER, ADD],
                                         tool_choice=NAMED_ADD, temperature=0, max_tokens=48)
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    check_calls(choice.message.tool_calls, {"add"})
    assert len(choice.message.tool_calls) == 1


def test_required_tool_choice(server, client) -> None:
    out = client.chat.completions.create(model=MODEL, messages=WEATHER_Q, tools=[WEATHER, ADD],
                                         tool_choice="required", temperature=0, max_tokens=48)
    assert out.choices[0].finish_reason == "tool_calls"
    check_calls(out.choices[0].message.tool_calls, {"get_weather", "add"})


@pytest.mark.parametrize("tool_choice", ["required", NAMED_ADD])
def test_streamed_tool_calls_assemble_to_the_non_streamed_ones(server, client, tool_choice) -> None:
    kw = dict(messages=WEATHER_Q, tools=[WEATHER, ADD], tool_choice=tool_choice, max_tokens=48)
    plain = client.chat.completions.create(model=MODEL, temperature=0, **kw).choices[0].message.tool_calls
    chunks = stream_chunks(server, **kw)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    calls: dict[int, dict] = {}
    for chunk in chunks:
        for d in chunk["choices"][0]["delta"].get("tool_calls") or []:
            call = calls.setdefault(d["index"], {"id": d.get("id"), "name": d["function"].get("name"), "args": ""})
            call["args"] += d.get("function", {}).get("arguments") or ""
    assert [(c["name"], json.loads(c["args"])) for c in calls.values()] == \
        [(c.function.name, json.loads(c.function.arguments)) for c in plain]
    assert all(c["id"] and c["id"].startswith("call_") for c in calls.values())
    with client.chat.completions.stream(model=MODEL, temperature=0, **kw) as stream:  # the client's own assembly
        final = stream.get_final_completion()
    assert final.choices[0].finish_reason == "tool_calls"
    assert [(c.function.name, c.function.arguments) for c in final.choices[0].message.tool_calls] == \
        [(c.function.name, c.function.arguments) for c in plain]


@pytest.mark.parametrize("body, param", [
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format"),
])
def test_invalid_requests_are_400_with_param(server, client, body, param) -> None:
    with server.http() as http:
        res = http.post("/v1/chat/completions", json={"model": MODEL, "messages": WEATHER_Q, **body})
    assert res.status_code == 400
    validate(res.json(), "ErrorResponse")
    assert res.json()["error"]["param"] == param
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=WEATHER_Q, **body)
    assert err.value.status_code == 400 and err.value.body["param"] == param


def test_streamed_arguments_arrive_in_pieces(server, client) -> None:
    """OpenAI's shape: the first delta of a call has index, id, type and name (arguments ""); later ones carry
    pieces of the arguments as they are decoded, which join to the non-streamed arguments byte for byte."""
    kw = dict(messages=WEATHER_Q, tools=[WEATHER, ADD], tool_choice=NAMED_ADD, max_tokens=48, temperature=0)
    plain = client.chat.completions.create(model=MODEL, **kw).choices[0].message.tool_calls
    deltas = [t for c in client.chat.completions.create(model=MODEL, stream=True, **kw) if c.choices
              for t in c.choices[0].delta.tool_calls or []]
    first, rest = deltas[0], deltas[1:]
    assert (first.index, first.type, first.function.name, first.function.arguments) == (0, "function", "add", "")
    assert first.id.startswith("call_")
    assert len(rest) >= 2 and all(d.id is None and d.function.name is None and d.function.arguments for d in rest)
    assert "".join(d.function.arguments for d in rest) == plain[0].function.arguments  # byte-identical
    assert set(json.loads(plain[0].function.arguments)) == {"a", "b"}
