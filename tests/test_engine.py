"""Engine: parity with transformers `generate` per architecture, continuous batching, limits and cancellation.

Stops, EOS and logprobs, the same for every backend, are in tests/test_runner_contract.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from tailorlm.engine import Engine, SamplingParams, load_model
from tailorlm.engine.core import EngineCore
from tailorlm.errors import ContextOverflowError, InvalidRequestError
from tests.tiny import ARCHS, make_tiny_model

PROMPTS = [[5, 6, 7, 8], [9, 10], list(range(20, 50)), [3], [7] * 90]


def greedy(max_tokens: int, **kw) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, **kw)


@pytest.fixture(scope="module", params=ARCHS)
def tiny(request, tmp_path_factory) -> tuple[str, Path]:
    path = make_tiny_model(request.param, tmp_path_factory.mktemp(request.param))
    return request.param, path


@pytest.fixture(scope="module")
def engine64(tiny):
    eng = Engine(load_model(tiny[1], dtype="float64"), max_batch=8)
    yield eng
    eng.shutdown()


def reference(path: Path, prompt: list[int], n: int, dtype=torch.float64) -> list[int]:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False,
                         eos_token_id=None, pad_token_id=0, attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
    return out[0, len(prompt):].tolist()


def test_greedy_parity_with_transformers(tiny, engine64):
    _, path = tiny
    for i, prompt in enumerate(PROMPTS):
        n = 12 + 4 * i
        assert engine64.submit(prompt, greedy(n)).tokens() == reference(path, prompt, n)


def test_batched_equals_alone(engine64):
    lengths = [12 + 4 * i for i in range(len(PROMPTS))]
    alone = [engine64.submit(p, greedy(n)).tokens() for p, n in zip(PROMPTS, lengths)]
    handles = [engine64.submit(p, greedy(n)) for p, n in zip(PROMPTS, lengths)]
    assert [h.tokens() for h in handles] == alone


def test_requests_join_and_leave_between_steps(tiny):
    """A late request joins a running batch at once; an early finisher leaves without waiting."""
    eng = Engine(load_model(tiny[1], dtype="float64"), max_batch=4)
    core: EngineCore = eng.core
    events: dict[str, list] = {"long": [], "late": [], "short": []}
    def add(rid, prompt, n):
        core.add(core.make_request(rid, prompt, greedy(n), events[rid].append))
    add("long", PROMPTS[0], 30)
    add("short", PROMPTS[1], 3)
    core.step()
    core.step()
    assert len(core.running) == 2
    add("late", PROMPTS[2], 10)
    core.step()  # admitted and prefilled in this very step while "long" keeps decoding
    assert len(core.running) == 2 and {r.id for r in core.running} == {"long", "late"}
    assert len(events["late"]) == 1 and len(events["long"]) == 3 and events["short"][-1].finish_reason == "length"
    while core.has_work():
        core.step()
    got = {k: [e.token_id for e in v] for k, v in events.items()}
    for rid, prompt, n in [("long", PROMPTS[0], 30), ("short", PROMPTS[1], 3), ("late", PROMPTS[2], 10)]:
        assert got[rid] == eng.submit(prompt, greedy(n)).tokens()
    eng.shutdown()


def test_kv_budget_holds_requests_until_they_fit(tiny):
    """A request starts only while every running one could reach its full length within the KV budget; the
    cache never outgrows it (its growth's copy included), outputs are unchanged, and one that cannot fit even
    alone fails with the numbers."""
    eng = Engine(load_model(tiny[1], dtype="float32"), max_batch=4)
    core: EngineCore = eng.core
    cache = core.runner.cache
    # two requests of up to 256 positions (their slots made at once for the burst), never three
    core.kv_budget_bytes = cache.bytes_of(3, 256) - 1
    events: dict[str, list] = {k: [] for k in ("a", "b", "c", "huge")}
    for rid, prompt, n in [("a", PROMPTS[0], 40), ("b", PROMPTS[1], 20), ("c", PROMPTS[2], 10)]:
        core.add(core.make_request(rid, prompt, greedy(n), events[rid].append))
    core.step()
    assert {r.id for r in core.running} == {"a", "b"} and [r.id for r in core.waiting] == ["c"]
    seen = 0
    while core.has_work():
        core.step()
        seen = max(seen, cache.bytes_of(cache.slot_cap, cache.len_cap))
        assert seen <= core.kv_budget_bytes
    got = {k: [e.token_id for e in v] for k, v in events.items()}
    assert events["c"][-1].finish_reason == "length"  # it started once "b" finished
    eng.shutdown()
    small = Engine(load_model(tiny[1], dtype="float32"), max_batch=4, kv_budget_bytes=cache.bytes_of(1, 16))
    core = small.core
    core.add(core.make_request("huge", PROMPTS[2], greedy(10), events["huge"].append))
    core.step()
    assert events["huge"][-1].finish_reason == "error" and "MiB of KV cache" in events["huge"][-1].error
    assert not core.has_work() and "huge" not in core.by_id
    small.shutdown()
    alone = Engine(load_model(tiny[1], dtype="float32"), max_batch=4)
    for rid, prompt, n in [("a", PROMPTS[0], 40), ("b", PROMPTS[1], 20), ("c", PROMPTS[2], 10)]:
        assert got[rid] == alone.submit(prompt, greedy(n)).tokens()
    alone.shutdown()


def test_a_burst_of_requests_grows_the_cache_once(tiny):
    """Requests waiting together get their slots in one growth of the cache (not one doubling per admission),
    and what they generate is unchanged."""
    eng = Engine(load_model(tiny[1], dtype="float32"), max_batch=8, prefill_budget=16)
    core: EngineCore = eng.core
    cache = core.runner.cache
    shapes = []
    grow = cache.reserve

    def counting(slots: int, length: int) -> None:
        before = (cache.slot_cap, cache.len_cap)
        grow(slots, length)
        if (cache.slot_cap, cache.len_cap) != before:
            shapes.append((cache.slot_cap, cache.len_cap))

    cache.reserve = counting
    events: dict[int, list] = {i: [] for i in range(6)}
    for i in range(6):
        core.add(core.make_request(str(i), PROMPTS[i % len(PROMPTS)], greedy(12), events[i].append))
    while core.has_work():
        core.step()
    assert shapes == [(6, 256)]
    alone = [eng.submit(PROMPTS[i % len(PROMPTS)], greedy(12)).tokens() for i in range(6)]
    assert [[e.token_id for e in events[i]] for i in range(6)] == alone
    eng.shutdown()


def test_float32_batched_equals_alone(tiny):
    eng = Engine(load_model(tiny[1]), max_batch=8)
    alone = [eng.submit(p, greedy(16)).tokens() for p in PROMPTS]
    assert [h.tokens() for h in [eng.submit(p, greedy(16)) for p in PROMPTS]] == alone
    eng.shutdown()


def test_context_overflow_is_an_error(engine64):
    ctx = engine64.context_length
    with pytest.raises(ContextOverflowError) as info:
        engine64.submit([5] * (ctx - 4), greedy(10))
    assert str(ctx) in info.value.message and "max_tokens" == info.value.param
    with pytest.raises(ContextOverflowError):
        engine64.submit([5] * (ctx + 1), SamplingParams())
    # Without max_tokens, generation may run up to the context length and no further.
    events = engine64.generate([5] * (ctx - 3), SamplingParams(temperature=0, ignore_eos=True))
    assert len(events) == 3 and events[-1].finish_reason == "length"


def test_bad_parameters_name_the_param(engine64):
    for params, name in [
        (SamplingParams(temperature=-1), "temperature"),
        (SamplingParams(top_p=0), "top_p"),
        (SamplingParams(logprobs=99), "logprobs"),
        (SamplingParams(logit_bias={10**6: 1.0}), "logit_bias"),
        (SamplingParams(max_tokens=0), "max_tokens"),
    ]:
        with pytest.raises(InvalidRequestError) as info:
            engine64.submit([1, 2], params)
        assert info.value.param == name
    with pytest.raises(InvalidRequestError):
        engine64.submit([], SamplingParams())
    with pytest.raises(InvalidRequestError):
        engine64.submit([10**6], SamplingParams())


def test_cancel_frees_slot_at_once(tiny):
    eng = Engine(load_model(tiny[1]), max_batch=2)
    core = eng.core
    sink: list = []
    core.add(core.make_request("a", PROMPTS[0], greedy(200), sink.append))
    core.add(core.make_request("b", PROMPTS[1], greedy(200), sink.append))
    core.step()
    assert len(core.running) == 2
    assert core.abort("a")
    assert [r.id for r in core.running] == ["b"] and core.running[0].slot == 0
    assert sink[-1].finish_reason == "abort" and sink[-1].request_id == "a"
    core.step()  # "b" keeps going from its moved slot
    # Through the threaded front: cancel mid-stream ends the stream and frees the slot.
    handle = eng.submit(PROMPTS[2], greedy(200))
    seen = 0
    for event in handle:
        seen += 1
        if seen == 3:
            handle.cancel()
    assert handle.finish_reason == "abort" and seen < 200
    deadline = time.monotonic() + 5
    while eng.stats()["running"] > 1 and time.monotonic() < deadline:  # "b" may still run
        time.sleep(0.01)
    assert "req" not in {r.id[:3] for r in core.running}
    eng.shutdown()
