"""Batched sampling: penalties, logit bias, temperature, top-k/top-p/min-p, seeded draws, logprobs.

Everything is vectorised over the rows of a step. The only per-row Python work is for rows that
asked for it: a seeded request draws its uniform number from its own generator (what makes it
reproducible whatever else shares its batch; unseeded rows draw together), and penalties or a
constraint update that request's state with its new token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tailorlm.engine.types import SamplingParams


@dataclass
class RowState:
    """Sampling state of one running request."""

    params: SamplingParams
    generator: torch.Generator | None
    counts: torch.Tensor | None = None  # [V] output-token counts (penalties only)
    seen: torch.Tensor | None = None  # [V] bool, prompt or output token (repetition penalty)
    bias: torch.Tensor | None = None  # [V] dense logit bias

    @classmethod
    def create(cls, params: SamplingParams, prompt_ids: list[int], vocab_size: int) -> "RowState":
        gen = None
        if not params.greedy and params.seed is not None:  # unseeded rows share torch's default generator
            gen = torch.Generator()
            gen.manual_seed(params.seed)
        state = cls(params, gen)
        if params.uses_penalties:
            state.counts = torch.zeros(vocab_size)
            state.seen = torch.zeros(vocab_size, dtype=torch.bool)
            state.seen[torch.tensor(prompt_ids, dtype=torch.long)] = True
        if params.logit_bias:
            state.bias = torch.zeros(vocab_size)
            idx = torch.tensor([int(t) for t in params.logit_bias], dtype=torch.long)
            state.bias[idx] = torch.tensor(list(params.logit_bias.values()), dtype=torch.float32)
        return state

    @property
    def stateful(self) -> bool:
        """True when this row's state follows its tokens (penalty counts, a constraint)."""
        return self.counts is not None or self.params.constraint is not None

    def observe(self, token: int) -> None:
        if self.params.constraint is not None:
            self.params.constraint.accept(token)
        if self.counts is not None:
            self.counts[token] += 1
            self.seen[token] = True


@dataclass
class SampleResult:
    tokens: list[int]
    logprobs: list[float | None]
    top_logprobs: list[tuple[tuple[int, float], ...]]


def _apply_penalties(logits: torch.Tensor, rows: list[RowState]) -> torch.Tensor:
    idx = [i for i, r in enumerate(rows) if r.counts is not None]
    if idx:
        sel = torch.tensor(idx)
        sub = logits[sel]
        counts = torch.stack([rows[i].counts for i in idx])
        seen = torch.stack([rows[i].seen for i in idx])
        rep = torch.tensor([rows[i].params.repetition_penalty for i in idx]).unsqueeze(1)
        freq = torch.tensor([rows[i].params.frequency_penalty for i in idx]).unsqueeze(1)
        pres = torch.tensor([rows[i].params.presence_penalty for i in idx]).unsqueeze(1)
        penalised = torch.where(sub > 0, sub / rep, sub * rep)
        sub = torch.where(seen, penalised, sub)
        sub = sub - counts * freq - (counts > 0).float() * pres
        logits[sel] = sub
    for i, r in enumerate(rows):
        if r.params.constraint is not None:
            allowed = r.params.constraint.allowed()[: logits.shape[1]].to(logits.device)
            logits[i, : allowed.shape[0]].masked_fill_(~allowed, float("-inf"))
            logits[i, allowed.shape[0]:] = float("-inf")
    bias_idx = [i for i, r in enumerate(rows) if r.bias is not None]
    if bias_idx:
        sel = torch.tensor(bias_idx)
        logits[sel] += torch.stack([rows[i].bias for i in bias_idx])
    return logits


def _sample_rows(logits: torch.Tensor, rows: list[RowState]) -> torch.Tensor:
    """Temperature, top-k, top-p, min-p, then an inverse-CDF draw per row. logits: [B, V]."""
    v = logits.shape[1]
    temp = torch.tensor([r.params.temperature for r in rows]).unsqueeze(1)
    probs = torch.softmax(logits / temp, dim=-1)
    sorted_p, order = torch.sort(probs, dim=-1, descending=True)
    rank = torch.arange(v).unsqueeze(0)
    top_k = torch.tensor([r.params.top_k if r.params.top_k > 0 else v for r in rows]).unsqueeze(1)
    top_p = torch.tensor([r.params.top_p for r in rows]).unsqueeze(1)
    min_p = torch.tensor([r.params.min_p for r in rows]).unsqueeze(1)
    before = torch.cumsum(sorted_p, dim=-1) - sorted_p  # mass strictly above each candidate
    keep = (rank < top_k) & (before < top_p) & (sorted_p >= min_p * sorted_p[:, :1])
    keep[:, 0] = True  # the most likely token always survives
    kept = torch.where(keep, sorted_p, torch.zeros_like(sorted_p))
    # Every cut is monotone in rank, so the kept tokens are a prefix of the sorted order.
    cdf = torch.cumsum(kept.double(), dim=-1)
    u = torch.rand(len(rows), dtype=torch.float64)
    for i, r in enumerate(rows):
        if r.generator is not None:
            u[i] = torch.rand(1, generator=r.generator, dtype=torch.float64)
    target = (u * cdf[:, -1]).unsqueeze(1)
    pick = torch.searchsorted(cdf, target, right=True)
    pick = torch.minimum(pick, keep.sum(dim=-1, keepdim=True) - 1)
    return order.gather(1, pick).squeeze(1)


def sample(logits: torch.Tensor, rows: list[RowState]) -> SampleResult:
    """Pick one token per row. logits: [B, V] (any float dtype)."""
    logits = logits.float()
    want_lp = [r.params.logprobs for r in rows]
    raw_lp = torch.log_softmax(logits, dim=-1) if any(k is not None for k in want_lp) else None
    if any(r.stateful or r.bias is not None for r in rows):
        logits = _apply_penalties(logits.clone(), rows)
    tokens = torch.argmax(logits, dim=-1)
    sampled = [i for i, r in enumerate(rows) if not r.params.greedy]
    if sampled:
        sel = torch.tensor(sampled)
        tokens[sel] = _sample_rows(logits[sel], [rows[i] for i in sampled])
    token_list = tokens.tolist()
    lps: list[float | None] = [None] * len(rows)
    tops: list[tuple[tuple[int, float], ...]] = [()] * len(rows)
    if raw_lp is not None:
        for i, k in enumerate(want_lp):
            if k is None:
                continue
            lps[i] = float(raw_lp[i, token_list[i]])
            if k > 0:
                vals, ids = torch.topk(raw_lp[i], k)
                tops[i] = tuple(zip(ids.tolist(), vals.tolist()))
    for r, t in zip(rows, token_list):
        if r.stateful:
            r.observe(t)
    return SampleResult(token_list, lps, tops)
