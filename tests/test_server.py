"""The OpenAI-compatible server end to end: real HTTP on loopback, the official `openai` client,
every response body validated against the official OpenAI spec.

The API tests run three times, on the same weights through each backend: the native engine, the GGUF export
through llama.cpp, and the ONNX export through onnxruntime (`model` fixture)."""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest

from tailorlm.config import Settings
from tailorlm.db import connect
from tailorlm.server.auth import KeyStore
from tests.server_harness import live_server
from tests.spec import validate

pytestmark = pytest.mark.slow
MODEL = "smollm2-135m-instruct"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def server(default_store_home):
    with live_server(Settings(home=default_store_home, threads=2)) as live:
        yield live


@pytest.fixture(scope="module")
def client(server):
    return server.client()


@pytest.fixture(scope="module", params=["native", "gguf-f16", "onnx-int8"])
def model(request, default_store_home) -> str:
    """The default model as each backend serves it (exported once per session, parity-gated)."""
    if request.param == "native":
        return MODEL
    from tests.fixtures_default import exported_default

    return exported_default(default_store_home, *request.param.split("-"))


def raw_chat(server, model: str = MODEL, **body) -> httpx.Response:
    with server.http() as http:
        return http.post("/v1/chat/completions", json={"model": model, "messages": FRANCE, **body})


def test_models(server, client, model):
    with server.http() as http:
        body = http.get("/v1/models").json()
        validate(body, "ListModelsResponse")
        assert model in [m["id"] for m in body["data"]]
        validate(http.get(f"/v1/models/{model}").json(), "Model")
        missing = http.get("/v1/models/no-such-model")
        assert missing.status_code == 404
        validate(missing.json(), "ErrorResponse")
    assert client.models.retrieve(model).id == model


def test_chat_plain(server, client, model):
    res = raw_chat(server, model, temperature=0, max_tokens=20, user="alice")
    assert res.status_code == 200
    validate(res.json(), "CreateChatCompletionResponse")
    out = client.chat.completions.create(model=model, messages=FRANCE, temperature=0, max_tokens=20)
    assert "Paris" in out.choices[0].message.content
    assert out.choices[0].finish_reason == "stop"
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def test_chat_stream_matches_plain(server, client, model):
    plain = client.chat.completions.create(model=model, messages=FRANCE, temperature=0, max_tokens=20)
    with server.http() as http, http.stream("POST", "/v1/chat/completions", json={
        "model": model, "messages": FRANCE, "temperature": 0, "max_tokens": 20, "stream": True,
        "stream_options": {"include_usage": True},
    }) as res:
        lines = [line for line in res.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    for chunk in chunks:
        validate(chunk, "CreateChatCompletionStreamResponse")
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == plain.choices[0].message.content
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == plain.usage.completion_tokens
    stream = client.chat.completions.create(model=model, messages=FRANCE, temperature=0, max_tokens=20, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == text


def test_n_and_seed(client, model):
    kw = dict(model=model, messages=[{"role": "user", "content": "Tell me a fun fact."}], temperature=1.0,
              max_tokens=16, n=2, seed=1234)
    first = client.chat.completions.create(**kw)
    again = client.chat.completions.create(**kw)
    assert [c.index for c in first.choices] == [0, 1]
    assert [c.message.content for c in first.choices] == [c.message.content for c in again.choices]
    assert first.choices[0].message.content != first.choices[1].message.content


def test_stop_and_length(client, model):
    out = client.chat.completions.create(model=model, messages=FRANCE, temperature=0, max_tokens=20, stop=["Paris"])
    assert "Paris" not in out.choices[0].message.content and out.choices[0].finish_reason == "stop"
    out = client.chat.completions.create(model=model, messages=FRANCE, temperature=0, max_completion_tokens=3)
    assert out.choices[0].finish_reason == "length" and out.usage.completion_tokens == 3


def test_logprobs(server, model):
    res = raw_chat(server, model, temperature=0, max_tokens=5, logprobs=True, top_logprobs=3)
    body = res.json()
    validate(body, "CreateChatCompletionResponse")
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) >= 1
    for entry in content:
        assert len(entry["top_logprobs"]) == 3 and entry["logprob"] <= 0
        assert entry["top_logprobs"][0]["token"] == entry["token"]  # greedy picks the top alternative


def test_penalties_bias_and_roles(client, model):
    out = client.chat.completions.create(
        model=model, temperature=0, max_tokens=4, presence_penalty=0.5, frequency_penalty=0.5,
        logit_bias={"28": 100},  # token 28 forced every step
        messages=[{"role": "developer", "content": "Be brief."}, *FRANCE,
                  {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "Again?"}],
    )
    assert out.usage.completion_tokens == 4 and out.choices[0].finish_reason == "length"


def test_completions(server, client, model):
    with server.http() as http:
        body = http.post("/v1/completions", json={"model": model, "prompt": ["The capital of France is", "One, two,"],
                                                  "max_tokens": 4, "temperature": 0, "logprobs": 2, "echo": True}).json()
    # echoed prompt tokens carry null logprobs (as OpenAI's API does; the spec's schema says number)
    assert body["choices"][0]["text"].startswith("The capital of France is")
    assert body["choices"][0]["logprobs"]["token_logprobs"][0] is None
    with server.http() as http:
        body = http.post("/v1/completions", json={"model": model, "prompt": "The capital of France is",
                                                  "max_tokens": 4, "temperature": 0, "logprobs": 2}).json()
    validate(body, "CreateCompletionResponse")
    assert len(body["choices"][0]["logprobs"]["tokens"]) == body["usage"]["completion_tokens"]
    out = client.completions.create(model=model, prompt="The capital of France is", max_tokens=3, temperature=0)
    assert "Paris" in out.choices[0].text
    tokens = client.completions.create(model=model, prompt=[504, 3575, 282], max_tokens=2, temperature=0)
    assert tokens.usage.prompt_tokens == 3
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=model, prompt="The capital of France is", max_tokens=3, temperature=0, stream=True) if c.choices)
    assert streamed == out.choices[0].text


@pytest.mark.parametrize("body,param", [
    ({"temperature": 5}, "temperature"),
    ({"top_logprobs": 50, "logprobs": True}, "top_logprobs"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"n": 99}, "n"),
    ({"logit_bias": {"abc": 1}}, "logit_bias"),
])
def test_invalid_parameters_are_400_naming_the_param(server, body, param, model):
    res = raw_chat(server, model, **body)
    assert res.status_code == 400, res.text
    validate(res.json(), "ErrorResponse")
    assert res.json()["error"]["param"] == param


def test_context_overflow_gives_counts(server, model):
    res = raw_chat(server, model, max_tokens=9000)
    assert res.status_code == 400
    message = res.json()["error"]["message"]
    assert "8192" in message and "9000" in message and res.json()["error"]["code"] == "context_length_exceeded"


def test_unknown_model_is_404_never_a_fallback(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4o", messages=FRANCE)
    assert info.value.body["code"] == "model_not_found"


def test_body_too_large_and_bad_json(server):
    with server.http() as http:
        res = http.post("/v1/chat/completions", content=b"{" + b" " * (9 * 1024 * 1024) + b"}",
                        headers={"content-type": "application/json"})
        assert res.status_code == 413
        validate(res.json(), "ErrorResponse")
        res = http.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
        assert res.status_code == 400
        assert http.get("/v1/nothing-here").status_code == 404


def test_lone_surrogates_are_400_naming_the_field(server):
    """`"\\ud800"` is valid JSON but not text: a 400 naming the field, never a 500 from the tokenizer."""
    bad = '"a\\ud800b"'
    cases = {
        "/v1/chat/completions": (f'{{"model": "{MODEL}", "messages": [{{"role": "user", "content": {bad}}}]}}',
                                 "messages[0].content"),
        "/v1/completions": (f'{{"model": "{MODEL}", "prompt": ["ok", {bad}]}}', "prompt[1]"),
        "/v1/embeddings": (f'{{"model": "all-minilm-l6-v2", "input": {bad}}}', "input"),
        "/v1/vector_stores/vs_x/search": (f'{{"query": [{bad}]}}', "query[0]"),
    }
    with server.http() as http:
        for path, (body, param) in cases.items():
            res = http.post(path, content=body.encode(), headers={"content-type": "application/json"})
            assert res.status_code == 400, (path, res.text)
            validate(res.json(), "ErrorResponse")
            assert res.json()["error"]["param"] == param and "surrogate" in res.json()["error"]["message"]


def test_health_and_metrics(server, client):
    client.chat.completions.create(model=MODEL, messages=FRANCE, max_tokens=2)
    with server.http() as http:
        assert http.get("/health").json()["status"] == "ok"
        text = http.get("/metrics").text
    for name in ("tailor_requests_total", "tailor_prompt_tokens_total", "tailor_completion_tokens_total",
                 "tailor_time_to_first_token_seconds_bucket", "tailor_time_per_output_token_seconds_bucket",
                 "tailor_queue_depth", "tailor_running_batch_size", "tailor_loaded_models"):
        assert name in text, name
    assert 'route="/v1/chat/completions",status="200"' in text


def _running(server) -> int:
    return sum(s["running"] + s["waiting"] for s in server.app.state.tailor.registry.stats().values())


def test_disconnect_mid_stream_frees_the_slot(server):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Write a long story."}], "max_tokens": 2000,
            "stream": True, "ignore_eos": True}
    with server.http() as http, http.stream("POST", "/v1/chat/completions", json=body) as res:
        for i, _ in enumerate(res.iter_lines()):
            if i > 5:
                break
        assert _running(server) == 1
    deadline = time.monotonic() + 10
    while _running(server) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _running(server) == 0


def test_auth_and_queue_overflow(default_store_home, tmp_path):
    settings = Settings(home=default_store_home, database=tmp_path / "keys.db", threads=2, max_batch=1, max_queue=0,
                        max_prompt_tokens=200)
    keys = KeyStore(connect(settings.db_path))
    _, secret = keys.create("test")
    with live_server(settings) as live:
        with pytest.raises(openai.AuthenticationError):
            live.client(api_key="wrong").models.list()
        with live.http() as http:
            res = http.get("/v1/models")
            assert res.status_code == 401
            validate(res.json(), "ErrorResponse")
            assert http.get("/health").status_code == 200  # health needs no key
            for path in ("/metrics", "/openapi.json"):  # what describes the server needs one (public_metrics)
                assert http.get(path).status_code == 401, path
                assert http.get(path, headers={"authorization": f"Bearer {secret}"}).status_code == 200, path
        good = live.client(api_key=secret)
        assert good.models.list().data
        long = {"messages": [{"role": "user", "content": "Write a story."}], "max_tokens": 200}
        blocker = threading.Thread(target=lambda: good.chat.completions.create(model=MODEL, **long,
                                                                                extra_body={"ignore_eos": True}))
        blocker.start()
        deadline = time.monotonic() + 30
        while _running(live) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        with live.http(headers={"authorization": f"Bearer {secret}"}) as http:
            res = http.post("/v1/chat/completions", json={"model": MODEL, "messages": FRANCE, "max_tokens": 2})
        assert res.status_code == 429 and "retry-after" in res.headers
        validate(res.json(), "ErrorResponse")
        blocker.join(timeout=120)
        keys.revoke("test")
        with pytest.raises(openai.AuthenticationError):  # revoking the last key locks, never opens
            good.models.list()


def test_graceful_shutdown_ends_streams_cleanly(default_store_home, tmp_path):
    settings = Settings(home=default_store_home, database=tmp_path / "db", threads=2, graceful_timeout=1)
    with live_server(settings) as live:
        body = {"model": MODEL, "messages": FRANCE, "max_tokens": 3000, "stream": True, "ignore_eos": True}
        lines: list[str] = []
        with live.http() as http, http.stream("POST", "/v1/chat/completions", json=body) as res:
            for line in filter(None, res.iter_lines()):
                lines.append(line)
                if len(lines) == 6:
                    live.server.should_exit = True  # what SIGINT/SIGTERM do
        assert lines[-1] == "data: [DONE]"  # in-flight stream finished cleanly, not cut mid-chunk
        final = json.loads([line for line in lines if line.startswith("data: {")][-1][6:])
        assert final["choices"][0]["finish_reason"] == "stop"


def test_internal_fault_is_a_500_without_traceback(server):
    registry = server.app.state.tailor.registry
    original = registry.get

    async def broken(name):
        raise RuntimeError("secret internal detail")

    registry.get = broken
    try:
        res = raw_chat(server)
    finally:
        registry.get = original
    assert res.status_code == 500
    validate(res.json(), "ErrorResponse")
    assert "secret" not in res.text and "Traceback" not in res.text
