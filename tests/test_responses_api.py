"""/v1/responses end to end: real HTTP on loopback, the official `openai` client, bodies validated against the
official OpenAI spec. A tiny random model serves it (the same chat plan as chat completions, so texts compare)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jsonschema
import openai
import pytest

from tailorlm.config import Settings
from tests.server_harness import live_server, post_valid
from tests.spec import validate, validate_event
from tests.test_chat_structured import PERSON

MODEL = "tiny"
CITY = {"type": "object", "additionalProperties": False, "required": ["city"],
        "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}}}
WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city.", "parameters": CITY}
PERSON_FORMAT = {"format": {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}}
FIXED = {"temperature": 0, "extra_body": {"ignore_eos": True}}  # greedy, and exactly max_output_tokens long
HOURS = b"# Opening hours\n\nThe Lindenfeld library opens at nine on weekdays and at ten on Saturdays.\n"
CARDS = b"# Library cards\n\nA library card costs twelve euros a year. Students get theirs for free.\n"


def tiny_home(root: Path, context: int = 2048) -> Path:
    """A store holding one tiny random chat model, `tiny`."""
    from tailorlm.store import ModelStore
    from tests.tiny import make_tiny_model, save_tiny_tokenizer

    base = save_tiny_tokenizer(make_tiny_model("llama", root / "base", max_position_embeddings=context))
    ModelStore(root / "home").import_path(base, name=MODEL, show_progress=False)
    return root / "home"


def tiny_settings(home: Path) -> Settings:
    return Settings(home=home, threads=2, preload=False, default_model=MODEL)


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tiny_home(tmp_path_factory.mktemp("responses"))


@pytest.fixture(scope="module")
def server(home):
    with live_server(tiny_settings(home)) as live:
        yield live


@pytest.fixture(scope="module")
def client(server):
    return server.client()


def post(server, **body) -> dict:
    """A raw POST /v1/responses, its body checked against the spec."""
    return post_valid(server, "/v1/responses", {"model": MODEL, **body}, "Response")


def events(server, **body) -> list[dict]:
    """The raw events of a streamed response, each checked against the spec, numbered in order."""
    with server.http() as http, http.stream("POST", "/v1/responses", json={"model": MODEL, "stream": True, **body}) as res:
        assert res.status_code == 200, res.read()
        lines = [line for line in res.iter_lines() if line]
    data = [json.loads(line.removeprefix("data: ")) for line in lines if line.startswith("data: ")]
    assert [line.removeprefix("event: ") for line in lines if line.startswith("event: ")] == [d["type"] for d in data]
    for d in data:
        validate_event(d)
    assert [d["sequence_number"] for d in data] == list(range(len(data)))
    return data


def shape(items) -> list[dict]:
    """Output items without their ids (each response names its own)."""
    out = []
    for item in items:
        d = item if isinstance(item, dict) else item.model_dump(exclude_none=True)
        out.append({k: v for k, v in d.items() if k not in ("id", "call_id") and v is not None})
    return out


def test_string_input_and_the_same_text_as_chat(server, client) -> None:
    body = post(server, input="Hello there", max_output_tokens=8, temperature=0, ignore_eos=True)
    assert body["status"] == "incomplete" and body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["usage"]["output_tokens"] == 8 and body["store"] is True and body["output"][0]["type"] == "message"
    out = client.responses.create(model=MODEL, input="Hello there", max_output_tokens=8, **FIXED)
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hello there"}],
                                          max_tokens=8, **FIXED)
    assert out.output_text == body["output"][0]["content"][0]["text"] == chat.choices[0].message.content
    assert out.usage.input_tokens == chat.usage.prompt_tokens


def test_items_with_instructions(server, client) -> None:
    items = [{"role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
             {"role": "assistant", "content": "Hello!"}, {"type": "message", "role": "user", "content": "Bye"}]
    out = client.responses.create(model=MODEL, input=items, instructions="Be brief.", max_output_tokens=6,
                                  metadata={"team": "a"}, **FIXED)
    chat = client.chat.completions.create(model=MODEL, max_tokens=6, messages=[
        {"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}], **FIXED)
    assert (out.output_text, out.usage.input_tokens) == (chat.choices[0].message.content, chat.usage.prompt_tokens)
    assert out.instructions == "Be brief." and out.metadata == {"team": "a"}
    with server.http() as http:
        res = http.post("/v1/responses", json={"model": MODEL, "input": [{"role": "user", "content": [
            {"type": "input_image", "image_url": "http://x/y.png"}]}]})
    assert res.status_code == 400 and res.json()["error"]["param"] == "input[0].content[0]"


def test_continuation_retrieve_input_items_delete(server, client) -> None:
    first = client.responses.create(model=MODEL, input="What is the capital of France?", max_output_tokens=8, **FIXED)
    second = client.responses.create(model=MODEL, input="And of Italy?", previous_response_id=first.id,
                                     max_output_tokens=8, **FIXED)
    alone = client.responses.create(model=MODEL, input="And of Italy?", max_output_tokens=8, store=False, **FIXED)
    assert second.previous_response_id == first.id
    assert second.usage.input_tokens > alone.usage.input_tokens + first.usage.input_tokens  # the first turn is in it
    with server.http() as http:
        got = http.get(f"/v1/responses/{second.id}").json()
        listed = http.get(f"/v1/responses/{second.id}/input_items", params={"order": "asc"}).json()
        assert http.get(f"/v1/responses/{alone.id}").status_code == 404  # store: false
    validate(got, "Response")
    validate(listed, "ResponseItemList")
    assert got["output"] == second.model_dump(mode="json", exclude_unset=True)["output"]
    assert [(i["type"], i["role"]) for i in listed["data"]] == [("message", "user"), ("message", "assistant"),
                                                                ("message", "user")]
    assert listed["data"][1]["id"] == first.output[0].id and listed["data"][2]["content"][0]["text"] == "And of Italy?"
    page = client.responses.input_items.list(second.id, limit=1)  # newest first
    assert [i.id for i in page.data] == [listed["data"][2]["id"]] and page.has_more
    assert client.responses.retrieve(first.id).output_text == first.output_text
    with server.http() as http:
        gone = http.delete(f"/v1/responses/{first.id}")
    assert gone.json() == {"id": first.id, "object": "response", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(first.id)
    assert client.responses.retrieve(second.id).id == second.id  # a continuation keeps its own copy of the turn


def test_unknown_previous_response_is_404(server, client) -> None:
    with server.http() as http:
        res = http.post("/v1/responses", json={"model": MODEL, "input": "hi", "previous_response_id": "resp_nope"})
    assert res.status_code == 404
    validate(res.json(), "ErrorResponse")
    assert res.json()["error"]["param"] == "previous_response_id"
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=MODEL, input="hi", previous_response_id="resp_nope")


def test_json_schema_output_parses(server, client) -> None:
    body = post(server, input="Describe a person.", text=PERSON_FORMAT, max_output_tokens=64, temperature=0)
    assert body["status"] == "completed" and body["text"] == PERSON_FORMAT
    jsonschema.validate(json.loads(body["output"][0]["content"][0]["text"]), PERSON)


def test_function_call_round_trip(server, client) -> None:
    body = post(server, input="Weather in Paris?", tools=[WEATHER], tool_choice="required", max_output_tokens=160,
                temperature=0)
    (call,) = body["output"]
    assert call["type"] == "function_call" and call["name"] == "get_weather" and call["status"] == "completed"
    jsonschema.validate(json.loads(call["arguments"]), CITY)
    named = client.responses.create(model=MODEL, input="Weather in Paris?", tools=[WEATHER], max_output_tokens=160,
                                    tool_choice={"type": "function", "name": "get_weather"}, temperature=0)
    assert [o.type for o in named.output] == ["function_call"]
    answer = client.responses.create(model=MODEL, previous_response_id=body["id"], tools=[WEATHER],
                                     input=[{"type": "function_call_output", "call_id": call["call_id"],
                                             "output": "Sunny, 24 degrees."}], max_output_tokens=8, **FIXED)
    assert answer.output[0].type == "message" and answer.usage.input_tokens > body["usage"]["input_tokens"]
    with server.http() as http:
        listed = http.get(f"/v1/responses/{answer.id}/input_items", params={"order": "asc"}).json()
    validate(listed, "ResponseItemList")
    assert [i["type"] for i in listed["data"]] == ["message", "function_call", "function_call_output"]
    assert listed["data"][1]["call_id"] == listed["data"][2]["call_id"] == call["call_id"]


@pytest.mark.parametrize("ask", [
    {"input": "Describe a person.", "text": PERSON_FORMAT, "max_output_tokens": 64},
    {"input": "Weather in Rome?", "tools": [WEATHER], "tool_choice": "required", "max_output_tokens": 160},
], ids=["text", "function_call"])
def test_streaming_helper_equals_non_streamed(server, client, ask) -> None:
    plain = client.responses.create(model=MODEL, temperature=0, **ask)
    raw = events(server, temperature=0, **ask)
    kinds = [e["type"] for e in raw]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    if "text" in ask:
        assert kinds[2:5] == ["response.output_item.added", "response.content_part.added", "response.output_text.delta"]
        assert kinds[-4:-1] == ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
        deltas = "".join(e["delta"] for e in raw if e["type"] == "response.output_text.delta")
    else:
        assert "response.function_call_arguments.done" in kinds
        pieces = [e["delta"] for e in raw if e["type"] == "response.function_call_arguments.delta"]
        assert len(pieces) >= 2  # the arguments stream as they are decoded, not whole at the end
        deltas = "".join(pieces)
        done = next(e for e in raw if e["type"] == "response.function_call_arguments.done")
        assert done["arguments"] == deltas
    with client.responses.stream(model=MODEL, temperature=0, **ask) as stream:
        final = stream.get_final_response()
    assert shape(final.output) == shape(plain.output) and final.output_text == plain.output_text
    assert deltas == (plain.output_text if "text" in ask else plain.output[0].arguments)
    assert client.responses.retrieve(final.id).output_text == plain.output_text  # streamed ones are stored too


def test_store_survives_restart(tmp_path: Path) -> None:
    settings = tiny_settings(tiny_home(tmp_path))
    with live_server(settings) as live:
        first = live.client().responses.create(model=MODEL, input="Remember me", max_output_tokens=6, **FIXED)
    with live_server(settings) as live:
        client = live.client()
        assert client.responses.retrieve(first.id).output_text == first.output_text
        assert [i.type for i in client.responses.input_items.list(first.id)] == ["message"]
        again = client.responses.create(model=MODEL, input="Who?", previous_response_id=first.id,
                                        max_output_tokens=6, **FIXED)
        assert again.usage.input_tokens > first.usage.input_tokens


def test_file_search_cites_the_files(server, client) -> None:
    hours = client.files.create(file=("hours.md", HOURS), purpose="assistants")
    cards = client.files.create(file=("cards.md", CARDS), purpose="assistants")
    store = client.vector_stores.create(name="library", file_ids=[hours.id, cards.id])
    deadline = time.monotonic() + 120
    while client.vector_stores.retrieve(store.id).file_counts.completed < 2:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    tool = {"type": "file_search", "vector_store_ids": [store.id], "max_num_results": 1}
    body = post(server, input="When does the library open on Saturdays?", tools=[tool], max_output_tokens=8,
                include=["file_search_call.results"], temperature=0, ignore_eos=True)
    search, message = body["output"]
    assert search["type"] == "file_search_call" and search["queries"] == ["When does the library open on Saturdays?"]
    assert [(r["file_id"], r["filename"]) for r in search["results"]] == [(hours.id, "hours.md")]
    assert "Saturdays" in search["results"][0]["text"]
    notes = message["content"][0]["annotations"]
    assert notes and {(a["type"], a["file_id"], a["filename"]) for a in notes} == {("file_citation", hours.id,
                                                                                    "hours.md")}
    grounded = body["usage"]["input_tokens"]
    plain = client.responses.create(model=MODEL, input="When does the library open on Saturdays?", max_output_tokens=8,
                                    **FIXED)
    assert grounded > plain.usage.input_tokens + 10  # the source is in the prompt
    quiet = client.responses.create(model=MODEL, input="When does the library open on Saturdays?", tools=[tool],
                                    max_output_tokens=8, **FIXED)
    assert quiet.output[0].type == "file_search_call" and quiet.output[0].results is None  # not asked to include
    raw = events(server, input="When does the library open on Saturdays?", tools=[tool], max_output_tokens=8,
                 temperature=0, ignore_eos=True)
    assert "response.file_search_call.completed" in [e["type"] for e in raw]
    assert "response.output_text.annotation.added" in [e["type"] for e in raw]


def test_presets_and_adapters_as_model(server, client, home) -> None:
    """A preset and an `ft:` adapter resolve as they do for chat: the same text as a chat completion asking them."""
    from tailorlm.presets import Preset
    from tailorlm.presets.checks import create_preset
    from tailorlm.store import AdapterStore
    from tests.test_lora_serving import ADAPTERS
    from tests.tiny import make_tiny_adapter

    base = home.parent / "base"
    AdapterStore(home).add("ft:tiny:a:ftjob-a", MODEL, make_tiny_adapter(base, home.parent / "a", seed=1,
                                                                        **ADAPTERS["llama"][0]))
    create_preset(tiny_settings(home), Preset(name="terse", model=MODEL, system="Answer in one word.",
                                              parameters={"temperature": 0, "max_tokens": 6}))
    hello = [{"role": "user", "content": "Hello there"}]
    via_preset = client.responses.create(model="terse", input="Hello there", extra_body={"ignore_eos": True})
    assert via_preset.model == "terse" and via_preset.usage.output_tokens == 6 and via_preset.temperature == 0
    chat = client.chat.completions.create(model="terse", messages=hello, extra_body={"ignore_eos": True})
    assert via_preset.output_text == chat.choices[0].message.content
    tuned = client.responses.create(model="ft:tiny:a:ftjob-a", input="Hello there", max_output_tokens=6, **FIXED)
    chat = client.chat.completions.create(model="ft:tiny:a:ftjob-a", messages=hello, max_tokens=6, **FIXED)
    plain = client.responses.create(model=MODEL, input="Hello there", max_output_tokens=6, **FIXED)
    assert tuned.output_text == chat.choices[0].message.content != plain.output_text
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="ft:tiny:nope:ftjob-x", input="Hello there")
