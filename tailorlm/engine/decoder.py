"""A lean decode step for Llama-family models: transformers' math without transformers' per-call overhead.

On a CPU a decode step of a small model spends as long in Python and operator dispatch as in its matmuls
(docs/profiles/decode-fp32.md). This step runs the same computation as the model's own modules, reading
their weights (nothing is copied) and calling their projection layers, so whatever layout or adapter
wrapper a layer has is used as is. It is one plain function of tensors, so `torch.compile` can turn it
into a single graph.

Anything this step does not model exactly (other architectures, sliding windows, length-dependent RoPE)
is refused by `unsupported()`, and the runner keeps the transformers forward for it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tailorlm.engine.shape import ModelShape
from tailorlm.store.architectures import ARCHITECTURES as TABLE

ARCHITECTURES = tuple(t for t, a in TABLE.items() if a.lean_step)  # store/architectures.py says which
STATIC_ROPE = ("default", "linear", "llama3", "yarn")  # inv_freq does not depend on the sequence length
PROJECTIONS = (("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj")), ("mlp", ("gate_proj", "up_proj", "down_proj")))


def unsupported(model: nn.Module, window: int | None) -> str | None:
    """Why `model` cannot use the lean step (None: it can)."""
    cfg = model.config
    if cfg.model_type not in ARCHITECTURES:
        return f"architecture {cfg.model_type}"
    if window is not None:
        return "sliding-window attention"
    if getattr(cfg, "hidden_act", None) != "silu":
        return f"activation {getattr(cfg, 'hidden_act', None)}"
    rotary = getattr(model.model, "rotary_emb", None)
    if rotary is None or getattr(rotary, "rope_type", "default") not in STATIC_ROPE:
        return "length-dependent RoPE"
    for layer in model.model.layers:
        for block, names in PROJECTIONS:
            if not all(hasattr(getattr(layer, block, None), n) for n in names):
                return "an unexpected layer structure"
    return None


class LeanDecoder:
    """One token for each of rows 0..B-1, written into slots 0..B-1 of the slot cache's tensors."""

    def __init__(self, model: nn.Module) -> None:
        cfg = model.config
        base = model.model
        self.model = model
        shape = ModelShape.of(cfg)
        self.heads, self.kv_heads, self.head_dim = shape.heads, shape.kv_heads, shape.head_dim
        self.scaling = float(base.layers[0].self_attn.scaling)
        self.eps = cfg.rms_norm_eps
        self.inv_freq = base.rotary_emb.inv_freq.float()
        self.rope_scale = float(base.rotary_emb.attention_scaling)

    def _rope(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin [B, 1, head_dim] as transformers' rotary embedding computes them (float32, then cast)."""
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.rope_scale).to(dtype)[:, None], (emb.sin() * self.rope_scale).to(dtype)[:, None]

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = self.head_dim // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin

    def _attend(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None):
        """One query row per request against its keys: q [B, H, D], keys/values [B, KV, T, D] -> [B, H*D].

        Plain matmuls over the query heads grouped by their key head (no repeated keys): on CPU this beats SDPA's
        flash kernel, built for long queries, in bf16 and at many rows (docs/decisions.md).
        """
        b = q.shape[0]
        q = q.view(b, self.kv_heads, -1, self.head_dim)  # [B, KV, G, D]: G query heads share a key head
        if torch.compiler.is_compiling():  # multiply-and-sum: compiled into one fused loop, no matmul calls
            scores = (q.unsqueeze(3).float() * keys.unsqueeze(2).float()).sum(-1) * self.scaling
        else:
            scores = torch.matmul(q, keys.transpose(-1, -2)).float() * self.scaling
        if mask is not None:  # [B, 1, 1, T] -> every head of a row sees the same keys
            scores = scores.masked_fill(~mask, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        if torch.compiler.is_compiling():
            out = (probs.unsqueeze(-1) * values.unsqueeze(2).float()).sum(3).to(q.dtype)
        else:
            out = torch.matmul(probs.to(q.dtype), values)
        return out.reshape(b, self.heads * self.head_dim)

    def forward(self, token_ids: torch.Tensor, positions: torch.Tensor, kv_len: int, mask: torch.Tensor | None,
                keys: list[torch.Tensor], values: list[torch.Tensor]) -> torch.Tensor:
        """token_ids, positions: [B]; mask: [B, 1, 1, kv_len] bool, or None when every row sees all keys."""
        base = self.model.model
        b = token_ids.shape[0]
        h = base.embed_tokens(token_ids)
        cos, sin = self._rope(positions, h.dtype)
        rows = torch.arange(b)
        span = kv_len
        if keys[0].dtype != torch.float32 and 2 * kv_len > keys[0].shape[2] and not torch.compiler.is_compiling():
            # Reduced-precision matmuls copy a strided key view ([:b, :, :kv_len] of a longer cache) before
            # multiplying; the full capacity is contiguous, so past half of it, attend over all of it with the
            # rest masked: 128 vs 177 µs per layer at 150 of 256 positions, 361 vs 2,055 µs at 1,000 of 1,024
            # (16 rows, bf16); at 30 of 256 the view wins, 70 vs 126 µs.
            span = keys[0].shape[2]
            mask = (torch.arange(span) <= positions[:, None]).view(b, 1, 1, span)
        for layer, k_store, v_store in zip(base.layers, keys, values):
            attn, mlp = layer.self_attn, layer.mlp
            x = F.rms_norm(h, (h.shape[-1],), layer.input_layernorm.weight, self.eps)
            q = self._rotate(attn.q_proj(x).view(b, self.heads, self.head_dim), cos, sin)
            k = self._rotate(attn.k_proj(x).view(b, self.kv_heads, self.head_dim), cos, sin)
            k_store[rows, :, positions] = k
            v_store[rows, :, positions] = attn.v_proj(x).view(b, self.kv_heads, self.head_dim)
            o = self._attend(q, k_store[:b, :, :span], v_store[:b, :, :span], mask)
            h = h + attn.o_proj(o)
            x = F.rms_norm(h, (h.shape[-1],), layer.post_attention_layernorm.weight, self.eps)
            h = h + mlp.down_proj(F.silu(mlp.gate_proj(x)) * mlp.up_proj(x))
        h = F.rms_norm(h, (h.shape[-1],), base.norm.weight, self.eps)
        return self.model.lm_head(h).float()
