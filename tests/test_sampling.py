"""Sampling: seeded reproducibility, truncation rules, penalties and logit bias."""

from __future__ import annotations

import pytest
import torch

from tailorlm.engine import Engine, SamplingParams, load_model
from tailorlm.engine.sampling import RowState, sample
from tests.tiny import make_tiny_model

V = 8


def row(prompt=(0,), **kw) -> RowState:
    return RowState.create(SamplingParams(**kw), list(prompt), V)


def logits(*values: float) -> torch.Tensor:
    return torch.tensor([list(values)], dtype=torch.float32)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    eng = Engine(load_model(make_tiny_model("llama", tmp_path_factory.mktemp("m"), seed=3)), max_batch=8)
    yield eng
    eng.shutdown()


def test_seed_reproducible_alone_and_in_a_batch(engine):
    params = dict(temperature=1.0, max_tokens=24, ignore_eos=True)
    a = engine.submit([5, 6, 7], SamplingParams(seed=42, **params)).tokens()
    b = engine.submit([5, 6, 7], SamplingParams(seed=42, **params)).tokens()
    assert a == b
    others = [engine.submit([9, 9], SamplingParams(seed=s, **params)) for s in range(3)]
    c = engine.submit([5, 6, 7], SamplingParams(seed=42, **params))
    assert c.tokens() == a
    for h in others:
        h.tokens()
    d = engine.submit([5, 6, 7], SamplingParams(seed=43, **params)).tokens()
    assert d != a


def test_truncations_reduce_to_greedy(engine):
    greedy = engine.submit([5, 6, 7], SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)).tokens()
    for cut in (dict(top_k=1), dict(top_p=1e-6), dict(min_p=1.0)):
        params = SamplingParams(temperature=1.5, seed=1, max_tokens=16, ignore_eos=True, **cut)
        assert engine.submit([5, 6, 7], params).tokens() == greedy, cut


def test_top_k_and_top_p_keep_only_the_head():
    r = row(temperature=1.0, top_k=2, seed=0)
    picks = {sample(logits(5, 4.9, 4.8, 0, 0, 0, 0, 0), [r]).tokens[0] for _ in range(200)}
    assert picks == {0, 1}
    r = row(temperature=1.0, top_p=0.5, seed=0)  # token 0 alone holds > 0.5 of the mass
    assert {sample(logits(3, 1, 1, 1, 0, 0, 0, 0), [r]).tokens[0] for _ in range(100)} == {0}


def test_sampling_follows_the_distribution():
    r = row(temperature=1.0, seed=7)
    counts = torch.zeros(V)
    for _ in range(2000):
        counts[sample(logits(1, 1, 0, 0, -9, -9, -9, -9), [r]).tokens[0]] += 1
    probs = torch.softmax(logits(1, 1, 0, 0, -9, -9, -9, -9)[0], -1)
    assert torch.allclose(counts / 2000, probs, atol=0.04)


def test_frequency_and_presence_penalties():
    base = logits(2.0, 1.9, 0, 0, 0, 0, 0, 0)
    r = row(temperature=0, frequency_penalty=0.5)
    assert sample(base.clone(), [r]).tokens == [0]  # now token 0 has count 1: 2.0 - 0.5 < 1.9
    assert sample(base.clone(), [r]).tokens == [1]
    r = row(temperature=0, presence_penalty=0.2)
    assert sample(base.clone(), [r]).tokens == [0]
    assert sample(base.clone(), [r]).tokens == [1]


def test_repetition_penalty_covers_the_prompt():
    r = row(prompt=[0], temperature=0, repetition_penalty=1.2)
    assert sample(logits(2.0, 1.9, 0, 0, 0, 0, 0, 0), [r]).tokens == [1]  # 2.0/1.2 < 1.9
    r = row(prompt=[3], temperature=0, repetition_penalty=1.2)
    assert sample(logits(2.0, 1.9, 0, 0, 0, 0, 0, 0), [r]).tokens == [0]


def test_logit_bias(engine):
    forced = engine.submit([5, 6], SamplingParams(temperature=0.8, seed=3, max_tokens=8, ignore_eos=True,
                                                  logit_bias={17: 100.0})).tokens()
    assert forced == [17] * 8
    greedy = engine.submit([5, 6], SamplingParams(temperature=0, max_tokens=1)).tokens()[0]
    banned = engine.submit([5, 6], SamplingParams(temperature=0, max_tokens=1, logit_bias={greedy: -100.0}))
    assert banned.tokens()[0] != greedy


def test_penalties_in_a_batch_apply_per_row():
    rows = [row(temperature=0, frequency_penalty=2.0), row(temperature=0)]
    batch = logits(2.0, 1.9, 0, 0, 0, 0, 0, 0).repeat(2, 1)
    assert sample(batch.clone(), rows).tokens == [0, 0]
    assert sample(batch.clone(), rows).tokens == [1, 0]
