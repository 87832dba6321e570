"""Prefix caching: a shared prompt prefix is computed once, and reusing it changes no token."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tailorlm.engine import Engine, SamplingParams, load_model
from tailorlm.engine.prefix_cache import BLOCK, PrefixCache
from tailorlm.store.peft import read_config
from tests.tiny import make_tiny_adapter, make_tiny_model

SHARED = [1] + [10 + (i * 7) % 300 for i in range(199)]  # 200 tokens: 3 full blocks, with a token left to prefill
SUFFIXES = [[5, 6, 7], [8, 9], [11, 12, 13, 14]]


def greedy(n: int = 12) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("prefix")
    base = make_tiny_model("llama", root / "base")
    return base, make_tiny_adapter(base, root / "adapter", seed=4, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])


def engine(base: Path, cache_bytes: int) -> Engine:
    return Engine(load_model(base, dtype="float64"), max_batch=4, prefix_cache_bytes=cache_bytes)


def test_cached_prefix_gives_the_same_tokens_and_skips_its_prefill(tiny) -> None:
    base, _ = tiny
    plain, cached = engine(base, 0), engine(base, 64 * 2**20)
    try:
        want = [plain.submit(SHARED + s, greedy()).tokens() for s in SUFFIXES]
        got = [cached.submit(SHARED + s, greedy()).tokens() for s in SUFFIXES]
        assert got == want
        assert cached.core.prefix_cache.hit_tokens == 2 * 3 * BLOCK  # the 2nd and 3rd requests reused 3 blocks
        together = [cached.submit(SHARED + s, greedy()) for s in SUFFIXES]  # batched, sharing blocks at once
        assert [h.tokens() for h in together] == want
    finally:
        plain.shutdown()
        cached.shutdown()


def test_adapters_do_not_share_keys_and_a_reload_forgets(tiny) -> None:
    base, adapter = tiny
    plain, cached = engine(base, 0), engine(base, 64 * 2**20)
    try:
        for eng in (plain, cached):
            eng.load_adapter("a", load_file(adapter / "adapter_model.safetensors"), read_config(adapter))
        cached.submit(SHARED + [5], greedy()).tokens()  # the base's keys for SHARED are now cached
        hits = cached.core.prefix_cache.hit_tokens
        got = cached.submit(SHARED + [6], greedy(), adapter="a").tokens()
        assert got == plain.submit(SHARED + [6], greedy(), adapter="a").tokens()
        assert cached.core.prefix_cache.hit_tokens == hits  # nothing of the base's reused through the adapter
        assert cached.submit(SHARED + [7], greedy(), adapter="a").tokens() == \
            plain.submit(SHARED + [7], greedy(), adapter="a").tokens()
        assert cached.core.prefix_cache.hit_tokens == hits + 3 * BLOCK  # the adapter's own prefix, reused
        cached.load_adapter("a", load_file(adapter / "adapter_model.safetensors"), read_config(adapter))
        cached.submit([1, 2, 3], greedy(2)).tokens()  # the load takes effect before this request runs
        assert not cached.core.prefix_cache.entries
    finally:
        plain.shutdown()
        cached.shutdown()


def test_the_store_stays_within_its_capacity_and_keeps_shared_beginnings() -> None:
    layers, heads, dim = 2, 2, 4
    block_bytes = 2 * layers * heads * BLOCK * dim * 4
    cache = PrefixCache(capacity_bytes=5 * block_bytes)

    def read(start: int, end: int):
        return [(torch.full((heads, end - start, dim), float(start)), torch.zeros(heads, end - start, dim))
                for _ in range(layers)]

    first = list(range(4 * BLOCK))
    cache.add(first, None, read)
    assert len(cache.entries) == 4 and cache.bytes == 4 * block_bytes
    second = first[:BLOCK] + [7] * (3 * BLOCK)  # shares only the first block
    cache.add(second, None, read)
    assert cache.bytes <= cache.capacity and len(cache.entries) == 5
    assert len(cache.match(first + [1], None)) >= 1  # the shared first block survived eviction
    assert len(cache.match(second + [1], None)) == 4  # the newest prefix is whole
    assert cache.match(first + [1], "adapter") == []  # keys name the adapter
    assert len(cache.match(first[:BLOCK], None)) == 0  # a prompt of exactly one block still prefills a token
