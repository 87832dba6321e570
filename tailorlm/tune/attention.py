"""Attention over a packed row, one example at a time.

A packed row of k examples, attended with a block-diagonal mask, costs T² attention work for T
tokens and takes SDPA's masked path; each example alone costs only its own length squared and takes
the fast causal kernel. So training registers this function as the model's attention: given the
examples' boundaries (`cu_seq_lens_q`, passed through the model's forward kwargs), it runs causal
SDPA per example and concatenates. It is exact — the block-diagonal mask says the same — and falls
back to masked SDPA when it cannot apply (no boundaries given, or a sliding window shorter than an
example).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

NAME = "tailor_packed_sdpa"


def packed_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                **kwargs) -> tuple[torch.Tensor, None]:
    bounds = kwargs.get("cu_seq_lens_q")
    window = getattr(module, "sliding_window", None) or kwargs.get("sliding_window")
    usable = bounds is not None and query.shape[0] == 1 and not getattr(module, "attn_logit_softcapping", None)
    if usable and window:
        usable = max(e - s for s, e in zip(bounds[:-1], bounds[1:], strict=False)) <= window
    if not usable:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    groups = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    dropout = dropout if module.training else 0.0
    parts = [
        F.scaled_dot_product_attention(query[:, :, s:e], key[:, :, s:e], value[:, :, s:e],
                                       dropout_p=dropout, is_causal=True, scale=scaling)
        for s, e in zip(bounds[:-1], bounds[1:], strict=False)
    ]
    out = torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, packed_sdpa)
