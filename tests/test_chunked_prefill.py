"""Chunked prefill: a long prompt is spread over steps while running requests keep decoding."""

from __future__ import annotations

from pathlib import Path

import pytest

from tailorlm.engine import Engine, SamplingParams, load_model
from tailorlm.engine.core import EngineCore
from tests.tiny import make_tiny_model

BUDGET = 16
LONG = [1] + [10 + (i * 7) % 300 for i in range(69)]  # 70 tokens: 5 chunks of at most 16
SHORT = [[5, 6, 7, 8], [9, 10]]


def greedy(n: int) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return make_tiny_model("llama", tmp_path_factory.mktemp("chunked") / "base")


@pytest.fixture(scope="module")
def whole(base):
    """The reference: every prompt prefilled in one piece."""
    eng = Engine(load_model(base, dtype="float64"), max_batch=4, prefill_budget=512)
    yield eng
    eng.shutdown()


def chunked(base: Path, **kw) -> Engine:
    return Engine(load_model(base, dtype="float64"), max_batch=4, prefill_budget=BUDGET, **kw)


class Driver:
    """Drives a core step by step, recording each request's tokens and the prompt tokens prefilled per step."""

    def __init__(self, core: EngineCore) -> None:
        self.core = core
        self.events: dict[str, list] = {}
        self.prefilled: list[int] = []
        prefill = core.runner.prefill
        def counting(slot, token_ids, start, **kw):
            self.prefilled[-1] += len(token_ids)
            return prefill(slot, token_ids, start, **kw)
        core.runner.prefill = counting

    def add(self, rid: str, prompt: list[int], n: int) -> None:
        self.events[rid] = []
        self.core.add(self.core.make_request(rid, prompt, greedy(n), self.events[rid].append))

    def step(self) -> dict[str, int]:
        """One step; returns the events each request got in it."""
        before = {k: len(v) for k, v in self.events.items()}
        self.prefilled.append(0)
        self.core.step()
        assert self.prefilled[-1] <= BUDGET
        assert [r.slot for r in self.core.running] == list(range(len(self.core.running)))
        if self.core.prefilling is not None:
            assert self.core.prefilling.slot == len(self.core.running)
        return {k: len(v) - before[k] for k, v in self.events.items()}

    def finish(self) -> dict[str, list[int]]:
        while self.core.has_work():
            self.step()
        return {k: [e.token_id for e in v if e.token_id is not None] for k, v in self.events.items()}


def test_chunked_output_equals_whole_prefill(base, whole) -> None:
    eng = chunked(base)
    try:
        want = whole.submit(LONG, greedy(12)).tokens()
        assert eng.submit(LONG, greedy(12)).tokens() == want
        handles = [eng.submit(p, greedy(12)) for p in [LONG, *SHORT, LONG[:40]]]  # batched, chunked together
        assert [h.tokens() for h in handles] == [whole.submit(p, greedy(12)).tokens()
                                                 for p in [LONG, *SHORT, LONG[:40]]]
    finally:
        eng.shutdown()


def test_running_requests_get_a_token_every_step_while_a_long_prompt_prefills(base, whole) -> None:
    eng = chunked(base)
    run = Driver(eng.core)
    run.add("short", SHORT[0], 20)
    assert run.step() == {"short": 1}
    run.add("long", LONG, 5)
    for _ in range(4):  # 16 tokens a step: the long prompt is still partial
        assert run.step() == {"short": 1, "long": 0}
        assert eng.core.prefilling.id == "long" and [r.id for r in eng.core.running] == ["short"]
    assert run.step() == {"short": 1, "long": 1}  # its last 6 tokens, then its first token
    assert eng.core.prefilling is None and [r.id for r in eng.core.running] == ["short", "long"]
    assert run.prefilled[1:6] == [16, 16, 16, 16, 6]
    got = run.finish()
    assert got == {"short": whole.submit(SHORT[0], greedy(20)).tokens(), "long": whole.submit(LONG, greedy(5)).tokens()}
    eng.shutdown()


def test_abort_of_a_partial_request_frees_its_slot(base, whole) -> None:
    eng = chunked(base)
    run = Driver(eng.core)
    run.add("short", SHORT[0], 12)
    run.add("gone", LONG, 5)
    run.step()
    run.step()
    assert eng.core.prefilling.id == "gone" and eng.core.prefilling.slot == 1
    assert eng.core.abort("gone")
    assert eng.core.prefilling is None and run.events["gone"][-1].finish_reason == "abort"
    run.add("next", LONG[::-1], 6)  # reuses the slot, over the aborted request's keys
    got = run.finish()
    assert len(run.events["gone"]) == 1
    assert got["short"] == whole.submit(SHORT[0], greedy(12)).tokens()
    assert got["next"] == whole.submit(LONG[::-1], greedy(6)).tokens()
    eng.shutdown()


def test_partial_request_moves_down_when_a_running_one_leaves(base, whole) -> None:
    eng = chunked(base)
    core = eng.core
    run = Driver(core)
    run.add("brief", SHORT[0], 3)
    run.add("steady", SHORT[1], 15)
    run.add("long", LONG, 8)
    run.add("cut", LONG[:30], 8)
    run.step()  # brief and steady whole, 10 tokens of long
    assert core.prefilling.id == "long" and core.prefilling.slot == 2
    run.step()
    run.step()  # brief finishes: steady moves to slot 0, long to slot 1
    assert [r.id for r in core.running] == ["steady"] and core.prefilling.slot == 1
    run.step()
    assert core.abort("steady")  # the partial request moves again, to slot 0
    assert core.running == [] and core.prefilling.slot == 0
    got = run.finish()
    assert got["brief"] == whole.submit(SHORT[0], greedy(3)).tokens()
    assert got["long"] == whole.submit(LONG, greedy(8)).tokens()
    assert got["cut"] == whole.submit(LONG[:30], greedy(8)).tokens()
    eng.shutdown()


def test_prefix_cache_with_chunks(base, whole) -> None:
    shared = LONG + LONG[1:] + LONG[1:]  # 208 tokens: 3 cached blocks
    eng = chunked(base, prefix_cache_bytes=64 * 2**20)
    try:
        for suffix in ([5, 6], [7, 8, 9]):
            assert eng.submit(shared + suffix, greedy(6)).tokens() == whole.submit(shared + suffix, greedy(6)).tokens()
        assert eng.core.prefix_cache.hit_tokens == 3 * 64
    finally:
        eng.shutdown()
