"""What the scheduler needs from whatever computes logits: the native runner (transformers modules over
the slot cache, or its C++ decode step) or another runtime behind the same engine (llama.cpp for GGUF,
onnxruntime for ONNX).

A runner owns `max_slots` KV-cache slots. The scheduler keeps running requests in slots 0..B-1 and asks
for one of two forwards: `prefill` writes a request's tokens into its slot, `decode` advances rows 0..B-1
by one token each. Sampling, stops, logprobs and constraints stay in the scheduler, so every backend gets
them alike. What a runner offers beyond that it declares in `capabilities` (LoRA adapters, prefix caching,
a KV budget); the scheduler and the engine read the declaration and never probe for methods.

Every runner is built by a `RunnerFactory`, which each loader returns in its `LoadedModel`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch

from tailorlm.errors import UnsupportedModelError


@dataclass(frozen=True)
class RunnerCapabilities:
    """What a runner can do beyond prefill, decode and move_slot; declared once per runner class."""

    lora: bool = False  # serves LoRA adapters per row: `lora.add`/`remove`, and `adapter(s)` in prefill/decode
    prefix_cache: bool = False  # `read_kv`/`write_kv`: a prompt prefix's keys and values copied out of and into a slot
    # `kv_peak_bytes`: what its cache would hold, so requests are admitted within a budget; `reserve`: room made
    # at once for a burst of requests, so the cache grows (and copies) once instead of slot by doubling slot
    kv_budget: bool = False


class AdapterSlots(Protocol):
    """The LoRA adapters a runner serves (the native runner's LoraBank; `NoAdapters` elsewhere)."""

    def __contains__(self, name: str) -> bool: ...
    def add(self, name: str, weights: dict) -> None: ...
    def remove(self, name: str) -> None: ...


class Runner(Protocol):
    capabilities: ClassVar[RunnerCapabilities]
    lora: AdapterSlots  # NoAdapters unless capabilities.lora

    def prefill(self, slot: int, token_ids: list[int], start: int, all_logits: bool = False,
                adapter: str | None = None) -> torch.Tensor:
        """Write `token_ids` at positions start.. of `slot`; float logits [len(token_ids) or 1, vocab]."""

    def decode(self, token_ids: list[int], positions: list[int],
               adapters: Sequence[str | None] | None = None) -> torch.Tensor:
        """Row b feeds token_ids[b] at positions[b] into slot b; float logits [B, vocab]."""

    def move_slot(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` cached positions of slot `src` into slot `dst` (src is then free)."""

    # -- only where `capabilities` says so --------------------------------------------------------------
    def kv_peak_bytes(self, slots: int, length: int) -> int:
        """kv_budget: the cache's most memory while it makes room for `slots` requests of `length` positions."""

    def reserve(self, slots: int, length: int) -> None:
        """kv_budget: make room now for `slots` requests of `length` positions (never shrinks)."""

    def read_kv(self, slot: int, start: int, end: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """prefix_cache: a copy of positions start..end-1 of `slot`, per layer (keys, values)."""

    def write_kv(self, slot: int, start: int, blocks: list[list[tuple[torch.Tensor, torch.Tensor]]]) -> int:
        """prefix_cache: write cached blocks into `slot` from position `start` on; returns the positions written."""


@dataclass(frozen=True)
class RunnerFactory:
    """How runners of one loaded model are built: `factory(max_slots, context_length)`.

    The one way every runner is made (the engine, the export parity checks, the dtype gate and the tests all
    call it). The engine calls it in its own thread, where the runner will run: oneDNN-packed weights run
    ~1.4x faster in the thread that packed them (docs/decisions.md). `capabilities` are known before a
    runner exists, from its class.
    """

    runner: Callable[..., Runner]  # a runner class: runner(weights, max_slots=, context_length=, **options)
    weights: Any  # what it runs: a transformers model, a llama.cpp GGUFModel, an onnxruntime session
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def capabilities(self) -> RunnerCapabilities:
        return self.runner.capabilities

    def __call__(self, max_slots: int, context_length: int) -> Runner:
        return self.runner(self.weights, max_slots=max_slots, context_length=context_length, **self.options)


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

    def refuse(self, adapters: Sequence[str | None] | None) -> None:
        """Raise `add`'s error if a row names an adapter (a forward's `adapter(s)` argument)."""
        for name in adapters or ():
            if name is not None:
                self.add(name, {})
