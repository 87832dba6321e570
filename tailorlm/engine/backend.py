"""What the scheduler needs from whatever computes logits: the native runner (transformers modules over
the slot cache) or another runtime behind the same engine (llama.cpp for GGUF, onnxruntime for ONNX).

A runner owns `max_slots` KV-cache slots. The scheduler keeps running requests in slots 0..B-1 and asks
for one of two forwards: `prefill` writes a request's tokens into its slot, `decode` advances rows 0..B-1
by one token each. Sampling, stops, logprobs and constraints stay in the scheduler, so every backend gets
them alike. A runner may also say what its KV cache would hold (`kv_peak_bytes(slots, length)`, the native
runner does); the scheduler then admits requests within its KV budget.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch

from tailorlm.errors import UnsupportedModelError


class AdapterSlots(Protocol):
    """The LoRA adapters a runner serves (the native runner's LoraBank; `NoAdapters` elsewhere)."""

    def __contains__(self, name: str) -> bool: ...
    def add(self, name: str, weights: dict) -> None: ...
    def remove(self, name: str) -> None: ...


class Runner(Protocol):
    lora: AdapterSlots

    def prefill(self, slot: int, token_ids: list[int], start: int, all_logits: bool = False,
                adapter: str | None = None) -> torch.Tensor:
        """Write `token_ids` at positions start.. of `slot`; float logits [len(token_ids) or 1, vocab]."""

    def decode(self, token_ids: list[int], positions: list[int],
               adapters: Sequence[str | None] | None = None) -> torch.Tensor:
        """Row b feeds token_ids[b] at positions[b] into slot b; float logits [B, vocab]."""

    def move_slot(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` cached positions of slot `src` into slot `dst` (src is then free)."""


RunnerFactory = Callable[[int, int], Runner]  # (max_slots, context_length) -> runner, built in the engine thread


class NoAdapters:
    """A runner that serves no LoRA adapters at runtime: export merges them into the artifact instead."""

    def __init__(self, backend: str) -> None:
        self.backend = backend

    def __contains__(self, name: str) -> bool:
        return False

    def add(self, name: str, weights: dict) -> None:
        raise UnsupportedModelError(f"the {self.backend} backend serves no LoRA adapters at runtime; "
                                    f"export the adapter merged into its base (`tailor export {name}`)")

    def remove(self, name: str) -> None:
        raise KeyError(name)
