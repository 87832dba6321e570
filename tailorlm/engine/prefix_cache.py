"""Prefix caching: requests that share the start of their prompt (a system prompt, a preset's instructions and
sources, a few-shot header) reuse its keys and values instead of computing them again.

Prompts are cut into BLOCK-token blocks. Block i is keyed by the adapter and a digest chained over blocks 0..i,
so one key names the whole prefix up to that block's end. After a request's prompt is prefilled, its full blocks
are copied out of the slot cache into a store bounded in bytes (least recently used goes first); a later request
copies its longest run of cached leading blocks into its own slot and prefills only the rest. At least one prompt
token is always prefilled, since its logits give the first output token.

It runs over a runner whose capabilities declare `prefix_cache` (its `read_kv(slot, start, end)` and
`write_kv(slot, start, blocks)`): the native runner does, other backends do not, and for them the cache stays off.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np
import torch

BLOCK = 64  # tokens per cached block
KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [kv_heads, BLOCK, head_dim]


def _bytes(kv: KV) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)


class PrefixCache:
    def __init__(self, capacity_bytes: int) -> None:
        self.capacity = capacity_bytes
        self.entries: OrderedDict[bytes, KV] = OrderedDict()
        self.bytes = 0
        self.hit_tokens = 0  # prompt tokens served from the cache so far

    @staticmethod
    def keys(prompt: Sequence[int], adapter: str | None, blocks: int) -> list[bytes]:
        """The keys of the first `blocks` full blocks of `prompt`, each naming the whole prefix it ends."""
        digest = hashlib.blake2b((adapter or "").encode(), digest_size=16).digest()
        out = []
        for i in range(blocks):
            block = np.asarray(prompt[i * BLOCK:(i + 1) * BLOCK], dtype=np.int64).tobytes()
            digest = hashlib.blake2b(digest + block, digest_size=16).digest()
            out.append(digest)
        return out

    def match(self, prompt: Sequence[int], adapter: str | None) -> list[KV]:
        """The cached leading blocks of `prompt`, longest run first to last (leaving >= 1 token to prefill)."""
        found, used = [], []
        for key in self.keys(prompt, adapter, (len(prompt) - 1) // BLOCK):
            kv = self.entries.get(key)
            if kv is None:
                break
            found.append(kv)
            used.append(key)
        self._touch(used)
        self.hit_tokens += len(found) * BLOCK
        return found

    def add(self, prompt: Sequence[int], adapter: str | None, read: Callable[[int, int], KV]) -> None:
        """Keep the full blocks of a prefilled `prompt`; `read(start, end)` copies them out of its slot."""
        keys = self.keys(prompt, adapter, len(prompt) // BLOCK)
        for i, key in enumerate(keys):
            if key in self.entries:
                continue
            kv = read(i * BLOCK, (i + 1) * BLOCK)
            size = _bytes(kv)
            if size > self.capacity:
                break
            self.entries[key] = kv
            self.bytes += size
        self._touch(keys)
        while self.bytes > self.capacity:
            _, old = self.entries.popitem(last=False)
            self.bytes -= _bytes(old)

    def _touch(self, keys: list[bytes]) -> None:
        """Mark a prefix's blocks used, its first block last: eviction takes the ends of prefixes first, and the
        shared beginnings (which every later block needs) last."""
        for key in reversed(keys):
            if key in self.entries:
                self.entries.move_to_end(key)

    def clear(self) -> None:
        """Forget everything (an adapter's weights changed, so keys computed through it are stale)."""
        self.entries.clear()
        self.bytes = 0
