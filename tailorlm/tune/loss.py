"""The training losses: cross-entropy on trained tokens only, with logits computed only there; and the summed
log-probability of each example's trained tokens, which preference tuning (dpo.py) compares.

The vocabulary projection is the largest matmul of a small model (SmolLM2: 49,152 x 576) and its
logits the largest activation. Running the decoder, then projecting just the hidden states that
predict a trained token, skips that work for prompt tokens and never holds a [T, V] tensor for
them — the same loss as the full forward, for less time and memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from tailorlm.tune import attention
from tailorlm.tune.packing import PackedBatch


@dataclass
class LossParts:
    """Summed loss over a batch's trained tokens, their count, and how many were predicted right."""

    loss_sum: torch.Tensor
    tokens: int
    correct: int


def causal_lm(model: torch.nn.Module) -> PreTrainedModel:
    """The transformers model under a PEFT wrapper (LoRA layers stay injected in it)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model  # type: ignore[return-value]


def trained_logits(model: torch.nn.Module, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward one packed row; the logits (fp32) at the positions that predict a trained token, and those tokens."""
    lm = causal_lm(model)
    decoder = lm.base_model if lm.base_model is not lm else lm.model
    # The example boundaries let `tune.attention` attend per example; other attentions use the mask.
    packed = {"cu_seq_lens_q": batch.bounds} if lm.config._attn_implementation == attention.NAME else {}
    hidden = decoder(
        input_ids=batch.input_ids, position_ids=batch.position_ids,
        attention_mask=batch.attention_mask, use_cache=False, **packed,
    ).last_hidden_state[0]
    keep = batch.targets != -100
    logits = lm.get_output_embeddings()(hidden[keep])
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    softcap = getattr(lm.config, "final_logit_softcapping", None)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits, batch.targets[keep]


def packed_loss(model: torch.nn.Module, batch: PackedBatch) -> LossParts:
    """Forward one packed row and return the summed cross-entropy of its trained tokens."""
    logits, targets = trained_logits(model, batch)
    loss_sum = F.cross_entropy(logits, targets, reduction="sum")
    correct = int((logits.detach().argmax(-1) == targets).sum())
    return LossParts(loss_sum, int(targets.numel()), correct)


def sequence_logps(model: torch.nn.Module, batch: PackedBatch) -> torch.Tensor:
    """The summed log-probability of each packed example's trained tokens: [examples] (what DPO compares)."""
    logits, targets = trained_logits(model, batch)
    token_logps = -F.cross_entropy(logits, targets, reduction="none")  # log_softmax gathered at the targets
    positions = torch.nonzero(batch.targets != -100).squeeze(1)
    owner = torch.bucketize(positions, torch.tensor(batch.bounds[1:]), right=True)  # which example each is in
    return torch.zeros(batch.examples, dtype=token_logps.dtype).index_add(0, owner, token_logps)
