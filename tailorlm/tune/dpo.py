"""Direct preference optimization (Rafailov et al., 2023) on the LoRA trainer.

The policy is the base with its LoRA adapter; the reference is the same model with the adapter switched off
(PEFT's `disable_adapter`), so DPO holds no second copy of the weights and the reference is exactly the base.
For each pair, both answers are rendered as chat examples (the input's turns untrained, the answer trained:
`data_preference.pair_messages`), so the prompt is the one serving renders, and scored by the summed
log-probability of the answer's tokens under each model. With those four sums,

    loss = -log σ(β · ((π_chosen − ref_chosen) − (π_rejected − ref_rejected)))

averaged over the step's pairs; β(π − ref) is each answer's implicit reward. A step reports the share of pairs
whose preferred answer earns the higher reward (reward accuracy) and the mean reward margin. A LoRA adapter
starts as zero, so the first step's loss is log 2 and its margins 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence as Seq
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from tailorlm.chat import TextTokenizer
from tailorlm.tune.data_preference import pair_messages
from tailorlm.tune.loss import sequence_logps
from tailorlm.tune.objective import StepResult
from tailorlm.tune.packing import PackedBatch, Sequence, encode_example, pack, plan_micro_batches

COLUMNS = ["step", "epoch", "train_loss", "train_reward_accuracy", "train_reward_margin", "valid_loss",
           "valid_reward_accuracy", "valid_reward_margin", "learning_rate", "tokens", "trained_tokens",
           "tokens_per_second", "elapsed_seconds"]


@dataclass(frozen=True)
class PreferencePair:
    """A pair's two sides as training sequences; its length is both together (what one forward packs)."""

    chosen: Sequence
    rejected: Sequence

    def __len__(self) -> int:
        return len(self.chosen) + len(self.rejected)

    @property
    def trained_tokens(self) -> int:
        return self.chosen.trained_tokens + self.rejected.trained_tokens


def encode_pair(tok: TextTokenizer, data: Mapping[str, Any]) -> PreferencePair:
    """Tokens and loss masks of a preference line's two answers, each after the same rendered input."""
    return PreferencePair(encode_example(tok, pair_messages(data, "preferred_output")),
                          encode_example(tok, pair_messages(data, "non_preferred_output")))


@contextmanager
def reference(model: torch.nn.Module) -> Iterator[None]:
    """The reference model: `model` with its adapter switched off, and no gradients."""
    disable = getattr(model, "disable_adapter", None)
    if disable is None:
        raise TypeError("DPO needs a PEFT model: its reference is the base with the adapter switched off")
    with torch.no_grad(), disable():
        yield


def pack_pairs(group: Seq[PreferencePair]) -> PackedBatch:
    """One row: the group's preferred answers, then its non-preferred ones, in the same order."""
    return pack([p.chosen for p in group] + [p.rejected for p in group])


def split(logps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(preferred, non-preferred) log-probabilities of a `pack_pairs` row."""
    half = logps.shape[0] // 2
    return logps[:half], logps[half:]


def dpo_margins(beta: float, policy: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """β((π_c − ref_c) − (π_r − ref_r)) per pair, from `pack_pairs` rows' log-probabilities under each model."""
    (pc, pr), (rc, rr) = split(policy), split(ref)
    return beta * ((pc - rc) - (pr - rr))


@dataclass
class PairScores:
    """Summed answer log-probabilities per pair under one model: preferred and non-preferred, [pairs] each."""

    chosen: torch.Tensor
    rejected: torch.Tensor

    @property
    def margins(self) -> torch.Tensor:
        return self.chosen - self.rejected


@torch.no_grad()
def score_pairs(model: torch.nn.Module, pairs: Seq[PreferencePair], max_micro_tokens: int,
                on_scored: Callable[[int], None] | None = None) -> PairScores:
    """Both answers' log-probabilities of every pair under `model` as it is (eval mode, no gradients)."""
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    try:
        for group in plan_micro_batches(pairs, max_micro_tokens):
            c, r = split(sequence_logps(model, pack_pairs(group)))
            chosen.append(c)
            rejected.append(r)
            if on_scored is not None:
                on_scored(len(group))
    finally:
        model.train(was_training)
    empty = torch.zeros(0)
    return PairScores(torch.cat(chosen) if chosen else empty, torch.cat(rejected) if rejected else empty)


def reward_scores(prefix: str, margins: torch.Tensor) -> dict[str, float]:
    """Reward accuracy (the share of pairs with a positive margin; a tie is no win) and the mean margin."""
    n = max(int(margins.numel()), 1)
    return {f"{prefix}_reward_accuracy": float((margins > 0).sum()) / n,
            f"{prefix}_reward_margin": float(margins.sum()) / n}


class DPO:
    """The DPO objective at a given β; the examples of a step are `PreferencePair`s."""

    name = "dpo"
    columns = COLUMNS
    EVENT_NAMES: ClassVar[dict[str, str]] = {}

    def __init__(self, beta: float) -> None:
        self.beta = beta

    def backward(self, model: torch.nn.Module, pairs: Seq[PreferencePair], max_micro_tokens: int) -> StepResult:
        n = len(pairs)
        loss_sum = 0.0
        margins = []
        for group in plan_micro_batches(pairs, max_micro_tokens):  # whole pairs: the loss is per pair
            batch = pack_pairs(group)
            with reference(model):
                ref = sequence_logps(model, batch)
            margin = dpo_margins(self.beta, sequence_logps(model, batch), ref)
            loss = -F.logsigmoid(margin).sum()
            (loss / n).backward()
            loss_sum += float(loss.detach())
            margins.append(margin.detach())
        tokens = sum(len(p) for p in pairs)
        trained = sum(p.trained_tokens for p in pairs)
        return StepResult(loss_sum / n, reward_scores("train", torch.cat(margins)), tokens, trained)

    def evaluate(self, model: torch.nn.Module, pairs: Seq[PreferencePair], max_micro_tokens: int) -> dict[str, float]:
        policy = score_pairs(model, pairs, max_micro_tokens)
        with reference(model):
            ref = score_pairs(model, pairs, max_micro_tokens)
        margins = self.beta * (policy.margins - ref.margins)
        return {"valid_loss": float(-F.logsigmoid(margins).mean()), **reward_scores("valid", margins)}

    def describe(self, scores: dict[str, float]) -> str:
        prefix = "valid" if "valid_reward_accuracy" in scores else "train"
        return (f"reward accuracy={scores[f'{prefix}_reward_accuracy']:.3f}, "
                f"reward margin={scores[f'{prefix}_reward_margin']:.4f}")
