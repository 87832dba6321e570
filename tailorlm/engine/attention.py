"""Our attention entry point: transformers' SDPA, plus a cheap way to say "plain causal".

Passing an explicit 4D mask makes transformers skip its own mask building (which does not know our
slot cache), but an explicit mask also keeps SDPA off its fastest kernels. So when a forward is
plainly causal (a prefill from position 0, or a decode where every row attends to all its keys),
the runner passes `CAUSAL`, an empty 4D tensor, and this function turns it back into "no mask".
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

NAME = "tailor_sdpa"
CAUSAL = torch.zeros(1, 1, 0, 0, dtype=torch.bool)


def is_causal_marker(mask: object) -> bool:
    return isinstance(mask, torch.Tensor) and mask.numel() == 0


def tailor_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, **kwargs):
    if is_causal_marker(attention_mask):
        attention_mask = None  # SDPA then uses is_causal for q_len > 1, nothing for one query row
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(NAME, tailor_sdpa)
