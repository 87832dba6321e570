"""POST /v1/embeddings end to end: a real server on a loopback port, the official openai client, the spec."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import openai
import pytest

from tailorlm.config import Settings
from tailorlm.embeddings import EmbeddingModel, packaged_folder
from tailorlm.errors import ModelNotFoundError
from tailorlm.server import build_app
from tailorlm.server.routes import embeddings as embeddings_route
from tests import server_harness
from tests.server_harness import LiveServer, live_server
from tests.spec import validate

NAME = "all-minilm-l6-v2"
TEXTS = ["The cat sat on the mat.", "Embeddings over real HTTP.", "a"]


def _app_with_embeddings(settings: Settings):
    """build_app, plus the embeddings router for as long as app.py does not include it itself."""
    app = build_app(settings)
    if not any(getattr(r, "path", None) == "/v1/embeddings" for r in app.routes):
        app.include_router(embeddings_route.router)
    return app


@pytest.fixture(scope="module")
def reference() -> EmbeddingModel:
    try:
        return EmbeddingModel.load(packaged_folder(NAME), name=NAME)
    except ModelNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, reference: EmbeddingModel) -> Iterator[LiveServer]:
    home: Path = tmp_path_factory.mktemp("embeddings-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(server_harness, "build_app", _app_with_embeddings)
        with live_server(Settings(home=home, preload=False)) as live:
            yield live


def vectors(response) -> np.ndarray:
    return np.array([d.embedding for d in sorted(response.data, key=lambda d: d.index)], dtype=np.float32)


def test_client_default_is_base64_and_decodes_to_the_model_output(server: LiveServer, reference: EmbeddingModel) -> None:
    # The openai client sends encoding_format="base64" when none is given, and decodes it itself.
    response = server.client().embeddings.create(model=NAME, input=TEXTS)
    assert response.object == "list" and response.model == NAME and len(response.data) == len(TEXTS)
    expected, counts = reference.embed(TEXTS)
    np.testing.assert_allclose(vectors(response), expected, atol=1e-6)
    assert response.usage.prompt_tokens == response.usage.total_tokens == sum(counts)


def test_float_and_explicit_base64_agree(server: LiveServer, reference: EmbeddingModel) -> None:
    client = server.client()
    floats = client.embeddings.create(model=NAME, input=TEXTS[0], encoding_format="float")
    assert isinstance(floats.data[0].embedding, list) and len(floats.data[0].embedding) == 384
    raw = client.embeddings.create(model=NAME, input=TEXTS[0], encoding_format="base64")
    assert isinstance(raw.data[0].embedding, str)  # asked explicitly: the client leaves it encoded
    decoded = np.frombuffer(base64.b64decode(raw.data[0].embedding), dtype="<f4")
    np.testing.assert_array_equal(decoded, np.array(floats.data[0].embedding, dtype=np.float32))
    np.testing.assert_allclose(decoded, reference.embed([TEXTS[0]])[0][0], atol=1e-6)


def test_token_arrays_and_openai_model_names(server: LiveServer, reference: EmbeddingModel) -> None:
    client = server.client()
    pieces = [reference.tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    as_ids = client.embeddings.create(model="text-embedding-3-small", input=pieces, encoding_format="float")
    assert as_ids.model == NAME  # the model that really made the vectors
    np.testing.assert_allclose(vectors(as_ids), reference.embed(TEXTS)[0], atol=1e-6)
    one = client.embeddings.create(model="text-embedding-ada-002", input=pieces[1], encoding_format="float")
    np.testing.assert_allclose(vectors(one)[0], reference.embed([TEXTS[1]])[0][0], atol=1e-6)


def test_raw_bodies_match_the_openai_spec(server: LiveServer) -> None:
    with server.http() as http:
        r = http.post("/v1/embeddings", json={"model": NAME, "input": TEXTS, "dimensions": 384, "user": "u1"})
        assert r.status_code == 200, r.text
        body = r.json()
        validate(body, "CreateEmbeddingResponse")
        assert [d["index"] for d in body["data"]] == [0, 1, 2] and set(body) == {"object", "data", "model", "usage"}
        assert set(body["data"][0]) == {"object", "index", "embedding"}

        r = http.post("/v1/embeddings", json={"model": NAME, "input": TEXTS[0], "encoding_format": "base64"})
        body = r.json()
        encoded = body["data"][0]["embedding"]
        assert isinstance(encoded, str) and len(base64.b64decode(encoded)) == 384 * 4
        # The spec types `embedding` as numbers only; with the floats decoded the body matches it.
        body["data"][0]["embedding"] = np.frombuffer(base64.b64decode(encoded), dtype="<f4").tolist()
        validate(body, "CreateEmbeddingResponse")


def test_unknown_model_is_404(server: LiveServer) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        server.client().embeddings.create(model="gpt-4o", input="hi")
    assert err.value.code == "model_not_found" and err.value.body["param"] == "model"
    with server.http() as http:
        r = http.post("/v1/embeddings", json={"model": "smollm2-135m-instruct", "input": "hi"})
        assert r.status_code == 404
        validate(r.json(), "ErrorResponse")


@pytest.mark.parametrize("payload, param", [
    ({"input": ""}, "input"),
    ({"input": []}, "input"),
    ({"input": ["ok", ""]}, "input"),
    ({"input": [[2088], []]}, "input"),
    ({"input": ["text", 2088]}, "input"),  # mixed: no coercion of "1" → 1 either
    ({"input": [2088, 100257]}, "input"),  # a tiktoken id: outside this model's vocabulary
    ({"input": "word " * 300}, "input"),  # 302 tokens > 256: refused, never truncated
    ({"input": "hi", "dimensions": 256}, "dimensions"),
    ({"input": "hi", "encoding_format": "int8"}, "encoding_format"),
])
def test_bad_requests_are_400(server: LiveServer, payload: dict, param: str) -> None:
    with server.http() as http:
        r = http.post("/v1/embeddings", json={"model": NAME, **payload})
    assert r.status_code == 400, r.text
    validate(r.json(), "ErrorResponse")
    assert r.json()["error"]["param"].startswith(param)


def test_empty_input_through_the_client(server: LiveServer) -> None:
    with pytest.raises(openai.BadRequestError, match=r"input\[0\] is an empty string"):
        server.client().embeddings.create(model=NAME, input="")


def test_concurrent_requests_and_metrics(server: LiveServer, reference: EmbeddingModel) -> None:
    client = server.client()
    texts = [f"concurrent request number {i}" for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda t: client.embeddings.create(model=NAME, input=t, encoding_format="float"), texts))
    np.testing.assert_allclose(np.stack([vectors(r)[0] for r in results]), reference.embed(texts)[0], atol=1e-5)
    with server.http() as http:
        metrics = http.get("/metrics").text
    line = next(x for x in metrics.splitlines() if x.startswith(f'tailor_prompt_tokens_total{{model="{NAME}"}}'))
    assert float(line.split()[-1]) >= sum(reference.embed(texts)[1])
