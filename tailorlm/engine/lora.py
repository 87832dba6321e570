"""Per-row LoRA: one forward serves base rows and rows of several adapters together.

Each targeted linear layer is wrapped in a `LoraLinear` once some adapter needs it; the wrapper adds
`scale · (x Aᵀ) Bᵀ` to the rows of each adapter. It keeps the A and B of every adapter that targets it
concatenated along the rank (`a_cat [in, R]`, `b_cat [R, out]`, in load order), so a batch that mixes
adapters costs three ops per layer however many adapters it holds: `h = x @ a_cat`, `h *= mask` (zero
where a column is not the row's adapter) and `y += h @ b_cat`, over the column range of the adapters
present. A batch whose rows all use one adapter (a prefill, a one-adapter batch) takes that adapter's
slice only: `y += (x @ A) @ B`. `LoraBank` owns the wrappers and, for the current forward, knows each
row's adapter and builds the masks, once per column layout. A model with no adapter loaded has no
wrapper at all, so base-only speed is untouched.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from tailorlm.engine.layout import Int8Linear, OneDNNLinear, Q4Linear, TransposedLinear
from tailorlm.errors import UnsupportedModelError
from tailorlm.store.peft import pair_keys, parse_config


@dataclass(frozen=True)
class LoraWeights:
    """One module's adapter, ready to apply: y += (x @ a_t) @ b_t; the scale is folded into b_t."""

    a_t: torch.Tensor  # [in, r]
    b_t: torch.Tensor  # [r, out]


def _features(module: nn.Module) -> tuple[int, int] | None:
    """(in, out) of a linear layer in any of the engine's layouts; None for anything else."""
    if isinstance(module, (LoraLinear, nn.Linear, TransposedLinear, OneDNNLinear, Int8Linear, Q4Linear)):
        return module.in_features, module.out_features
    if isinstance(module, Conv1D):  # GPT-2 style: weight [in, out]
        return module.nx, module.nf
    return None


def linear_features(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Module path -> (in, out) for every linear layer an adapter may target."""
    return {name: f for name, m in model.named_modules() if (f := _features(m)) is not None}


def lora_from_peft(config: dict, tensors: dict[str, torch.Tensor], targets: dict[str, tuple[int, int]],
                   dtype: torch.dtype) -> dict[str, LoraWeights]:
    """Map a PEFT adapter (its config and tensors) onto the model's modules; refuse one that does not fit."""
    spec = parse_config(config)
    out: dict[str, LoraWeights] = {}
    for module, (key_a, key_b) in pair_keys(tensors).items():
        feats = targets.get(module)
        if feats is None:
            raise UnsupportedModelError(f"the adapter targets {module}, which is not a linear layer of this model")
        a, b = tensors[key_a], tensors[key_b]
        rank = a.shape[0]
        if a.dim() != 2 or b.dim() != 2 or b.shape[1] != rank or (a.shape[1], b.shape[0]) != feats:
            raise UnsupportedModelError(
                f"the adapter does not fit this model: {module} maps {feats[0]} -> {feats[1]} features, "
                f"but its lora_A is {list(a.shape)} and lora_B {list(b.shape)}"
            )
        scaled_b = b.to(torch.float64) * spec.scale(module, rank)
        out[module] = LoraWeights(a.t().to(dtype).contiguous(), scaled_b.t().to(dtype).contiguous())
    return out


class LoraLinear(nn.Module):
    """A linear layer plus the per-row deltas of the adapters that target it."""

    def __init__(self, base: nn.Module, bank: LoraBank) -> None:
        super().__init__()
        self.base = base
        self.bank = bank
        self.in_features, self.out_features = _features(base)
        self.adapters: dict[int, LoraWeights] = {}  # adapter id -> weights (views into a_cat / b_cat)
        self.spans: dict[int, tuple[int, int]] = {}  # adapter id -> its columns [start, end) of a_cat
        self.layout: tuple = ()  # the spans, frozen: the key of the masks a forward builds
        self.owner = torch.empty(0, dtype=torch.long)  # [R]: the adapter id of each column
        self.a_cat: torch.Tensor | None = None  # [in, R]
        self.b_cat: torch.Tensor | None = None  # [R, out], scales folded in

    def rebuild(self) -> None:
        """Re-concatenate the adapters' weights after an add or a remove."""
        ws = list(self.adapters.items())
        self.a_cat = torch.cat([w.a_t for _, w in ws], dim=1).contiguous() if ws else None
        self.b_cat = torch.cat([w.b_t for _, w in ws], dim=0).contiguous() if ws else None
        self.spans, owner, start = {}, [], 0
        for aid, w in ws:
            rank = w.a_t.shape[1]
            self.spans[aid] = (start, start + rank)
            self.adapters[aid] = LoraWeights(self.a_cat[:, start : start + rank], self.b_cat[start : start + rank])
            owner += [aid] * rank
            start += rank
        self.owner = torch.tensor(owner, dtype=torch.long)
        self.layout = tuple(self.spans.items())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        bank = self.bank
        if bank.single is None and bank.row_ids is None:
            return y
        x2 = x.reshape(-1, self.in_features)  # [N, in]: one row per token
        y2 = y.reshape(-1, self.out_features)  # [N, out]
        if bank.single is not None:  # every row uses this adapter (a prefill, or a batch of one adapter)
            w = self.adapters.get(bank.single)
            if w is None:
                return y
            y2.addmm_(x2 @ w.a_t, w.b_t)
            return y2.view(y.shape)
        cols = bank.mask(self)
        if cols is None:  # no row of this batch uses an adapter that targets this layer
            return y
        if x2.shape[0] != bank.rows:
            raise UnsupportedModelError("LoRA on a layer that does not see one row per token is not served")
        lo, hi, mask = cols
        h = x2 @ self.a_cat[:, lo:hi]
        h.mul_(mask)
        y2.addmm_(h, self.b_cat[lo:hi])
        return y2.view(y.shape)


class LoraBank:
    """The adapters loaded into one model, and which adapter each row of the current forward uses."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.ids: dict[str, int] = {}  # adapter name -> id
        self.layers: dict[str, LoraLinear] = {}  # module path -> wrapper
        self.single: int | None = None  # the one adapter every row of this forward uses
        self.row_ids: torch.Tensor | None = None  # [rows]: each row's adapter id (-1: base), for a mixed batch
        self.present: frozenset[int] = frozenset()  # the adapter ids of the mixed batch
        self.rows = 0
        self._masks: dict[tuple, tuple[int, int, torch.Tensor] | None] = {}  # per column layout, this forward
        self._next_id = itertools.count()
        self.listeners: list[Callable[[], None]] = []  # called after every add and remove

    def _changed(self) -> None:
        for listener in self.listeners:
            listener()

    def __contains__(self, name: str) -> bool:
        return name in self.ids

    def add(self, name: str, weights: dict[str, LoraWeights]) -> None:
        """Install (or replace) adapter `name`; wraps the layers it targets on first use."""
        if name in self.ids:
            self.remove(name)
        aid = next(self._next_id)
        for path, w in weights.items():
            layer = self.layers.get(path)
            if layer is None:
                parent, _, child = path.rpartition(".")
                owner = self.model.get_submodule(parent)
                layer = self.layers[path] = LoraLinear(getattr(owner, child), self)
                setattr(owner, child, layer)
            layer.adapters[aid] = w
            layer.rebuild()
        self.ids[name] = aid
        self._changed()

    def remove(self, name: str) -> None:
        """Drop adapter `name`; a layer no adapter targets any more gets its plain form back."""
        aid = self.ids.pop(name)
        for path, layer in list(self.layers.items()):
            if layer.adapters.pop(aid, None) is None:
                continue
            layer.rebuild()
            if not layer.adapters:
                parent, _, child = path.rpartition(".")
                setattr(self.model.get_submodule(parent), child, layer.base)
                del self.layers[path]
        self._changed()

    def select(self, adapters: Sequence[str | None]) -> None:
        """Set the rows of the next forward: adapters[i] is row i's adapter (None: the base model)."""
        self.clear()
        self.rows = len(adapters)
        if not self.ids or not any(adapters):
            return
        ids = [self.ids[a] if a is not None else -1 for a in adapters]
        present = set(ids)
        if len(present) == 1:
            self.single = ids[0]
        else:
            present.discard(-1)
            self.present = frozenset(present)
            self.row_ids = torch.tensor(ids, dtype=torch.long)

    def mask(self, layer: LoraLinear) -> tuple[int, int, torch.Tensor] | None:
        """For a mixed batch: the column range [lo, hi) of `layer` that covers the adapters present, and the
        [rows, hi - lo] mask that keeps, on each row, only its adapter's columns; None if none is present."""
        key = (layer.layout, layer.a_cat.dtype)
        if key in self._masks:
            return self._masks[key]
        spans = [layer.spans[aid] for aid in self.present if aid in layer.spans]
        cols = None
        if spans:
            lo, hi = min(s for s, _ in spans), max(e for _, e in spans)
            mask = (self.row_ids.unsqueeze(1) == layer.owner[lo:hi].unsqueeze(0)).to(layer.a_cat.dtype)
            cols = (lo, hi, mask)
        self._masks[key] = cols
        return cols

    def clear(self) -> None:
        self.single = None
        self.row_ids = None
        self.present = frozenset()
        self._masks = {}
