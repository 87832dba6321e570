"""A slot-based KV cache that many requests share, one row ("slot") per request.

Keys and values of layer l live in one preallocated tensor `[slots, kv_heads, capacity, head_dim]`.
Running requests occupy slots 0..n-1 contiguously, so a decode step attends over the view
`[:n, :, :kv_len]` without copying; when a request leaves, the last slot moves into its hole.
Capacity grows by whole blocks (rarely), never per step.

It plugs into any transformers model through the `Cache.update` hook that every attention
layer calls; the engine tells it, before each forward, which slots and positions the rows of
that forward write to.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache

GROW_BLOCK = 256


class SlotKVCache(Cache):
    """Keys/values of every running request, written in place at per-row positions."""

    def __init__(self, num_layers: int, kv_heads: int, head_dim: int, *, dtype: torch.dtype,
                 max_slots: int, max_len: int, v_head_dim: int | None = None) -> None:
        # Deliberately not calling Cache.__init__: this cache owns its storage.
        self.layers = []
        self.layer_class_to_replicate = None
        self.offloading = False
        self.num_layers = num_layers
        self.kv_heads, self.head_dim, self.v_head_dim = kv_heads, head_dim, v_head_dim or head_dim
        self.dtype = dtype
        self.max_slots, self.max_len = max_slots, max_len
        self.slot_cap = 0
        self.len_cap = 0
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self._plan: tuple | None = None  # set by prepare_* before each forward

    # -- storage -----------------------------------------------------------------
    def reserve(self, slots: int, length: int) -> None:
        """Make room for `slots` rows of `length` positions; grows (and copies) only when needed."""
        if slots > self.max_slots or length > self.max_len:
            raise ValueError(f"cache reservation {slots}x{length} beyond {self.max_slots}x{self.max_len}")
        new_slots, new_len = self.shape_after(slots, length)
        if (new_slots, new_len) == (self.slot_cap, self.len_cap):
            return
        def grow(old: torch.Tensor | None, dim: int) -> torch.Tensor:
            new = torch.zeros(new_slots, self.kv_heads, new_len, dim, dtype=self.dtype)
            if old is not None and old.numel():
                new[: old.shape[0], :, : old.shape[2]] = old
            return new
        olds_k = self.keys or [None] * self.num_layers
        olds_v = self.values or [None] * self.num_layers
        self.keys = [grow(k, self.head_dim) for k in olds_k]
        self.values = [grow(v, self.v_head_dim) for v in olds_v]
        self.slot_cap, self.len_cap = new_slots, new_len

    def shape_after(self, slots: int, length: int) -> tuple[int, int]:
        """(slots, positions) the cache holds once room for `slots` x `length` is reserved."""
        if slots <= self.slot_cap and length <= self.len_cap:
            return self.slot_cap, self.len_cap
        # slots double only when more slots are needed: a longer request alone must not multiply the rows
        new_slots = self.slot_cap if slots <= self.slot_cap else min(self.max_slots, max(slots, self.slot_cap * 2))
        new_len = min(self.max_len, max(-(-length // GROW_BLOCK) * GROW_BLOCK, self.len_cap))
        return new_slots, new_len

    def bytes_of(self, slots: int, length: int) -> int:
        """Bytes of keys and values for `slots` x `length` positions over every layer."""
        return self.num_layers * self.kv_heads * (self.head_dim + self.v_head_dim) * self.dtype.itemsize * slots * length

    def peak_bytes(self, slots: int, length: int) -> int:
        """The most memory the cache holds while it makes room for `slots` x `length`: the grown cache, and
        the previous one while it is copied over."""
        grown = self.shape_after(slots, length)
        now = self.bytes_of(self.slot_cap, self.len_cap)
        return now if grown == (self.slot_cap, self.len_cap) else self.bytes_of(*grown) + now

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` positions of slot `src` into slot `dst` (compaction)."""
        for k, v in zip(self.keys, self.values):
            k[dst, :, :length] = k[src, :, :length]
            v[dst, :, :length] = v[src, :, :length]

    # -- per-forward plans ---------------------------------------------------------
    def prepare_prefill(self, slot: int, start: int, length: int) -> None:
        """Next forward: one row, slot `slot`, tokens at positions start..start+length-1."""
        self._plan = ("prefill", slot, start, length)

    def prepare_decode(self, positions: torch.Tensor) -> None:
        """Next forward: rows 0..B-1 in slots 0..B-1, one token each at `positions[b]`."""
        rows = torch.arange(positions.shape[0])
        self._plan = ("decode", rows, positions, int(positions.max()) + 1)

    # -- the hook transformers calls in every attention layer -----------------------
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
               *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        # key_states: [B, kv_heads, S, head_dim]
        k_store, v_store = self.keys[layer_idx], self.values[layer_idx]
        plan = self._plan
        if plan[0] == "prefill":
            _, slot, start, length = plan
            end = start + length
            k_store[slot, :, start:end] = key_states[0]
            v_store[slot, :, start:end] = value_states[0]
            return k_store[slot : slot + 1, :, :end], v_store[slot : slot + 1, :, :end]
        _, rows, positions, kv_len = plan
        k_store[rows, :, positions] = key_states[:, :, 0]
        v_store[rows, :, positions] = value_states[:, :, 0]
        n = rows.shape[0]
        return k_store[:n, :, :kv_len], v_store[:n, :, :kv_len]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        plan = self._plan
        if plan is None:
            return 0
        return plan[2] if plan[0] == "prefill" else plan[3] - 1

    def __len__(self) -> int:
        return self.num_layers

    @property
    def is_compileable(self) -> bool:
        return False
