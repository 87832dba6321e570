"""gpt-oss over real HTTP: a tiny gpt-oss in a test store, the official `openai` client, spec checks.

The tiny model's weights are random except that it was taught a script (tests/tiny_gptoss.py `teach`):
after the prompt's `<|start|>assistant` it calls get_weather on the commentary channel, or, when a
request's logit_bias picks the other branch, answers on the final channel. So the server's harmony
path runs for real: prompt, stop tokens, tool calls, content, streaming. Reasoning (the analysis
channel) cannot be scripted this way (its header would loop); tests/test_chat_harmony.py covers it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tailorlm.chat import harmony, load_tokenizer
from tailorlm.config import Settings
from tests import server_harness as harness
from tests.server_harness import live_server
from tests.spec import validate
from tests.tiny_gptoss import make_tiny_gptoss

MODEL = "tiny-gpt-oss"
ASK = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Weather in Paris?"}]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
TOOL_CALL = '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city":"Paris"}<|call|>'
ANSWER = "<|channel|>final<|message|>It is sunny.<|return|>"
FINAL, IT = 17196, 3206  # "final", "It": the tokens that take the answer branch
ANSWER_BIAS = {str(FINAL): 20, str(IT): 20}


def script() -> dict[int, dict[int, float]]:
    """Token -> successors: the tool call at logit 60, the answer branch at 50."""
    enc, out = harmony.encoding(), {}
    for text, logit in ((TOOL_CALL, 60.0), (ANSWER, 50.0)):
        ids = [173781] + enc.encode(text, allowed_special="all")  # 173781: "assistant", the prompt's end
        for a, b in zip(ids, ids[1:]):
            out.setdefault(a, {}).setdefault(b, logit)
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_tiny_gptoss(tmp_path_factory.mktemp("gptoss") / "tiny", script=script())


@pytest.fixture(scope="module")
def home(folder, tmp_path_factory) -> Path:
    from tailorlm.store import ModelStore

    home = tmp_path_factory.mktemp("home")
    ModelStore(home).import_path(folder, name=MODEL, show_progress=False)
    return home


@pytest.fixture(scope="module")
def server(home):
    with live_server(Settings(home=home, threads=2, preload=False)) as live:
        yield live


def prompt_tokens(messages=ASK, **kw) -> int:
    return len(harmony.render(messages, **kw))


def chat(server, **body) -> dict:
    with server.http() as http:
        res = http.post("/v1/chat/completions", json={"model": MODEL, "messages": ASK, "temperature": 0, **body})
    assert res.status_code == 200, res.text
    validate(res.json(), "CreateChatCompletionResponse")
    return res.json()


def stream(server, **body) -> list[dict]:
    """Every chunk of a streamed chat (each checked against the spec); it must end with [DONE]."""
    chunks = harness.stream_chunks(server, {"model": MODEL, "messages": ASK, "temperature": 0,
                                            "stream_options": {"include_usage": True}, **body})
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant" and chunks[-1]["choices"] == []
    return chunks


def test_tokenizer_is_harmonys_vocabulary(folder):
    tok, enc = load_tokenizer(folder), harmony.encoding()
    sample = "Hello, world! It's 20 °C in Paris — naïve café 🦜\n\n  def f(x): return x**2  # 日本語 12345"
    assert tok.encode(sample, add_special_tokens=False) == enc.encode(sample)
    rendered = harmony.render(ASK, [WEATHER], reasoning_effort="low")
    assert tok.decode(rendered) == enc.decode(rendered) and tok.vocab_size == 201088
    assert [tok.hf.convert_tokens_to_ids(t) for t in ("<|start|>", "<|channel|>", "<|return|>", "<|call|>")] == \
        [200006, 200005, 200002, 200012]


def test_tool_call_from_the_commentary_channel(server):
    data = chat(server, tools=[WEATHER], reasoning_effort="high", max_tokens=40, logprobs=True, top_logprobs=2)
    choice = data["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "get_weather", "arguments": '{"city":"Paris"}'}
    assert data["usage"]["prompt_tokens"] == prompt_tokens(tools=[WEATHER], reasoning_effort="high")
    assert data["usage"]["completion_tokens"] == 18  # the whole header and body, up to <|call|>
    assert "".join(t["token"] for t in choice["logprobs"]["content"]).endswith('{"city":"Paris"}')

    events = list(server.client().chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], reasoning_effort="low", temperature=0, stream=True))
    deltas = [c for e in events if e.choices for c in e.choices[0].delta.tool_calls or []]
    assert deltas[0].id and deltas[0].function.name == "get_weather" and {d.index for d in deltas} == {0}
    assert "".join(d.function.arguments or "" for d in deltas) == '{"city":"Paris"}'
    assert events[-1].choices[0].finish_reason == "tool_calls"
    assert not any(e.choices[0].delta.content for e in events if e.choices)


def test_answer_from_the_final_channel(server):
    data = chat(server, reasoning_effort="minimal", max_tokens=40, logit_bias=ANSWER_BIAS)
    choice = data["choices"][0]
    assert choice["message"]["content"] == "It is sunny." and choice["finish_reason"] == "stop"
    assert "tool_calls" not in choice["message"] and "reasoning_content" not in choice["message"]
    chunks = stream(server, reasoning_effort="minimal", max_tokens=40, logit_bias=ANSWER_BIAS)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "It is sunny."
    finals = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finals == ["stop"] and chunks[-1]["usage"] == data["usage"]


def test_cut_short_by_max_tokens(server):
    """Stopped inside the harmony header: no content (OpenAI's reasoning models answer so too)."""
    choice = chat(server, max_tokens=3)["choices"][0]
    assert choice["finish_reason"] == "length" and choice["message"]["content"] == ""
    chunks = stream(server, max_tokens=3)
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"


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


def test_the_cli_plans_a_chat_as_the_api_does(server, home):
    """`tailor generate` on gpt-oss renders harmony, stops at <|call|> and parses channels, as the API does."""
    from tests.test_cli_run import tailor

    api = chat(server, max_tokens=40)
    out = tailor("generate", MODEL, ASK[1]["content"], "--system", ASK[0]["content"], "--max-tokens", "40",
                 "--json", home=home)
    assert out.returncode == 0, out.stderr
    cli = json.loads(out.stdout)
    assert cli["usage"]["prompt_tokens"] == api["usage"]["prompt_tokens"] == prompt_tokens()
    assert cli["usage"]["completion_tokens"] == api["usage"]["completion_tokens"] < 40  # stopped at <|call|>
    assert cli["text"] == (api["choices"][0]["message"]["content"] or "")
