"""Per-row LoRA: one forward serves base rows and rows of several adapters together.

Each targeted linear layer is wrapped in a `LoraLinear` once some adapter needs it; the wrapper adds
`scale · (x Aᵀ) Bᵀ` to the rows of each adapter, one matmul pair per adapter present in the batch
(never a loop over rows). `LoraBank` owns the wrappers and says, for the current forward, which rows
belong to which adapter. A model with no adapter loaded has no wrapper at all, so base-only speed is
untouched.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from tailorlm.engine.layout import OneDNNLinear, TransposedLinear
from tailorlm.errors import UnsupportedModelError
from tailorlm.store.peft import pair_keys, parse_config


@dataclass(frozen=True)
class LoraWeights:
    """One module's adapter, ready to apply: y += (x @ a_t) @ b_t; the scale is folded into b_t."""

    a_t: torch.Tensor  # [in, r]
    b_t: torch.Tensor  # [r, out]


def _features(module: nn.Module) -> tuple[int, int] | None:
    """(in, out) of a linear layer in any of the engine's layouts; None for anything else."""
    if isinstance(module, (LoraLinear, nn.Linear, TransposedLinear, OneDNNLinear)):
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
        self.adapters: dict[int, LoraWeights] = {}  # adapter id -> weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        groups = self.bank.groups
        if not groups:
            return y
        x2 = x.reshape(-1, self.in_features)  # [N, in]: one row per token
        y2 = y.reshape(-1, self.out_features)  # [N, out]
        for aid, rows in groups:
            w = self.adapters.get(aid)
            if w is None:
                continue
            if rows is None:  # every row uses this adapter (a prefill, or a batch of one adapter)
                y2.addmm_(x2 @ w.a_t, w.b_t)
            else:
                if x2.shape[0] != self.bank.rows:
                    raise UnsupportedModelError("LoRA on a layer that does not see one row per token is not served")
                y2.index_add_(0, rows, (x2.index_select(0, rows) @ w.a_t) @ w.b_t)
        return y2.view(y.shape)


class LoraBank:
    """The adapters loaded into one model, and which rows of the current forward use each."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.ids: dict[str, int] = {}  # adapter name -> id
        self.layers: dict[str, LoraLinear] = {}  # module path -> wrapper
        self.groups: list[tuple[int, torch.Tensor | None]] = []  # (adapter id, its rows or None for all)
        self.rows = 0
        self._next_id = itertools.count()

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
        self.ids[name] = aid

    def remove(self, name: str) -> None:
        """Drop adapter `name`; a layer no adapter targets any more gets its plain form back."""
        aid = self.ids.pop(name)
        for path, layer in list(self.layers.items()):
            layer.adapters.pop(aid, None)
            if not layer.adapters:
                parent, _, child = path.rpartition(".")
                setattr(self.model.get_submodule(parent), child, layer.base)
                del self.layers[path]

    def select(self, adapters: Sequence[str | None]) -> None:
        """Set the rows of the next forward: adapters[i] is row i's adapter (None: the base model)."""
        self.groups = []
        self.rows = len(adapters)
        if not self.ids or not any(adapters):
            return
        ids = torch.tensor([self.ids[a] if a is not None else -1 for a in adapters])
        present = sorted(set(ids.tolist()) - {-1})
        if len(present) == 1 and int(ids.min()) >= 0:
            self.groups = [(present[0], None)]
        else:
            self.groups = [(aid, (ids == aid).nonzero().squeeze(1)) for aid in present]

    def clear(self) -> None:
        self.groups = []
