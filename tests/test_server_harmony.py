"""gpt-oss over real HTTP: a tiny random gpt-oss in a test store, the official `openai` client, spec checks.

Random weights produce arbitrary tokens, so these tests check the harmony path end to end (prompt,
stop tokens, reasoning effort, streaming, shapes); tests/test_chat_harmony.py checks the parsing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tailorlm.chat import harmony, load_tokenizer
from tailorlm.config import Settings
from tests.server_harness import live_server
from tests.spec import validate
from tests.tiny_gptoss import make_tiny_gptoss

MODEL = "tiny-gpt-oss"
ASK = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Weather in Paris?"}]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_tiny_gptoss(tmp_path_factory.mktemp("gptoss") / "tiny")


@pytest.fixture(scope="module")
def server(folder, tmp_path_factory):
    from tailorlm.store import ModelStore

    home = tmp_path_factory.mktemp("home")
    ModelStore(home).import_path(folder, name=MODEL, show_progress=False)
    with live_server(Settings(home=home, threads=2)) as live:
        yield live


def prompt_tokens(**kw) -> int:
    return len(harmony.render(ASK, **kw))


def test_tokenizer_is_harmonys_vocabulary(folder):
    tok, enc = load_tokenizer(folder), harmony.encoding()
    sample = "Hello, world! It's 20 °C in Paris — naïve café 🦜\n\n  def f(x): return x**2  # 日本語 12345"
    assert tok.encode(sample, add_special_tokens=False) == enc.encode(sample)
    rendered = harmony.render(ASK, [WEATHER], reasoning_effort="low")
    assert tok.decode(rendered) == enc.decode(rendered) and tok.vocab_size == 201088
    assert [tok.hf.convert_tokens_to_ids(t) for t in ("<|start|>", "<|channel|>", "<|return|>", "<|call|>")] == \
        [200006, 200005, 200002, 200012]


def test_chat_with_reasoning_effort(server):
    body = dict(model=MODEL, messages=ASK, reasoning_effort="high", max_tokens=6, temperature=0,
                logprobs=True, top_logprobs=2)
    with server.http() as http:
        res = http.post("/v1/chat/completions", json=body)
    assert res.status_code == 200, res.text
    data = res.json()
    validate(data, "CreateChatCompletionResponse")
    choice = data["choices"][0]
    assert choice["finish_reason"] in ("stop", "length") and isinstance(choice["message"]["content"], str)
    assert data["usage"]["prompt_tokens"] == prompt_tokens(reasoning_effort="high")  # the harmony prompt
    assert len(choice["logprobs"]["content"]) <= 6

    out = server.client().chat.completions.create(model=MODEL, messages=ASK, reasoning_effort="high",
                                                  max_tokens=6, temperature=0)
    assert out.choices[0].message.content == choice["message"]["content"]  # greedy: the same again


def test_stream_ends_properly_and_matches(server):
    body = dict(model=MODEL, messages=ASK, tools=[WEATHER], reasoning_effort="low", max_tokens=6,
                temperature=0, stream=True, stream_options={"include_usage": True})
    with server.http() as http:
        whole = http.post("/v1/chat/completions", json={**body, "stream": False, "stream_options": None}).json()
        with http.stream("POST", "/v1/chat/completions", json=body) as res:
            assert res.status_code == 200
            lines = [line for line in res.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    for chunk in chunks:
        validate(chunk, "CreateChatCompletionStreamResponse")
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    finals = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finals == [whole["choices"][0]["finish_reason"]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]
    assert whole["usage"]["prompt_tokens"] == prompt_tokens(tools=[WEATHER], reasoning_effort="low")
    streamed = {"content": "", "reasoning_content": ""}
    for c in chunks:
        for key in streamed:
            streamed[key] += (c["choices"][0]["delta"].get(key) or "") if c["choices"] else ""
    message = whole["choices"][0]["message"]
    assert streamed == {"content": message["content"] or "", "reasoning_content": message.get("reasoning_content") or ""}

    stream = server.client().chat.completions.create(model=MODEL, messages=ASK, max_tokens=4, temperature=0,
                                                     reasoning_effort="minimal", stream=True)
    events = list(stream)
    assert events[-1].choices[0].finish_reason in ("stop", "length")


def test_tool_history_is_accepted(server):
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    messages = ASK + [{"role": "assistant", "content": None, "tool_calls": [call]},
                      {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 20}'}]
    out = server.client().chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER],
                                                  max_tokens=3, temperature=0)
    assert out.usage.prompt_tokens == len(harmony.render(messages, [WEATHER]))
    with server.http() as http:
        bad = http.post("/v1/chat/completions", json=dict(model=MODEL, max_tokens=3, messages=messages[:-2] + [
            {"role": "tool", "tool_call_id": "call_x", "content": "{}"}]))
    assert bad.status_code == 400
    validate(bad.json(), "ErrorResponse")
