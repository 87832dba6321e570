"""What a training step optimizes: an `Objective` turns one step's examples into gradients and scores.

The trainer (trainer.py) owns everything around a step — batches, learning rate, clipping, checkpoints — and
calls `backward` once per step; supervised fine-tuning (here) and DPO (dpo.py) differ only in this object.
Scores are named as in the metrics file (metrics.py); `EVENT_NAMES` renames the ones whose OpenAI names differ
in events and checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence as Seq
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch

from tailorlm.tune.loss import packed_loss
from tailorlm.tune.metrics import COLUMNS
from tailorlm.tune.packing import Sequence, pack, plan_micro_batches


@dataclass
class StepResult:
    """One step: its loss, its other scores (e.g. {"train_accuracy": 0.5}), tokens seen and tokens trained."""

    loss: float
    scores: dict[str, float]
    tokens: int
    trained_tokens: int


class Objective(Protocol):
    name: str
    columns: list[str]  # the metrics file's columns
    EVENT_NAMES: ClassVar[dict[str, str]]

    def backward(self, model: torch.nn.Module, examples: Seq[Any], max_micro_tokens: int) -> StepResult:
        """Accumulate the gradient of the step's mean loss over `examples` (micro-batch by micro-batch)."""
        ...

    def evaluate(self, model: torch.nn.Module, examples: Seq[Any], max_micro_tokens: int) -> dict[str, float]:
        """Validation scores named as in the metrics file ({"valid_loss": …, …}), without gradients."""
        ...

    def describe(self, scores: dict[str, float]) -> str:
        """The scores besides the loss, in words, for an event's message."""
        ...


def openai_names(objective: Objective, scores: dict[str, float]) -> dict[str, float]:
    """Scores as events and checkpoints name them (OpenAI's `train_mean_token_accuracy`, …)."""
    return {objective.EVENT_NAMES.get(k, k): v for k, v in scores.items()}


class Supervised:
    """Cross-entropy on the trained tokens, averaged over the step's trained tokens."""

    name = "supervised"
    columns = COLUMNS
    EVENT_NAMES: ClassVar[dict[str, str]] = {"train_accuracy": "train_mean_token_accuracy"}

    def backward(self, model: torch.nn.Module, examples: Seq[Sequence], max_micro_tokens: int) -> StepResult:
        total = sum(e.trained_tokens for e in examples)
        loss_sum = 0.0
        correct = tokens = 0
        for group in plan_micro_batches(examples, max_micro_tokens):
            parts = packed_loss(model, pack(group))
            (parts.loss_sum / max(total, 1)).backward()
            loss_sum += float(parts.loss_sum.detach())
            correct += parts.correct
            tokens += sum(len(e) for e in group)
        return StepResult(loss_sum / max(total, 1), {"train_accuracy": correct / max(total, 1)}, tokens, total)

    def evaluate(self, model: torch.nn.Module, examples: Seq[Sequence], max_micro_tokens: int) -> dict[str, float]:
        loss, accuracy = mean_loss(model, list(examples), max_micro_tokens)
        return {"valid_loss": loss, "valid_mean_token_accuracy": accuracy}

    def describe(self, scores: dict[str, float]) -> str:
        accuracy = scores.get("valid_mean_token_accuracy", scores.get("train_accuracy"))
        return "" if accuracy is None else f"token accuracy={accuracy:.3f}"


@torch.no_grad()
def mean_loss(model: torch.nn.Module, sequences: list[Sequence], max_micro_tokens: int,
              on_scored: Callable[[int], None] | None = None) -> tuple[float, float]:
    """Mean cross-entropy and token accuracy of `model` on the trained tokens of `sequences`.

    `on_scored(n)` is called after each forward with the number of sequences it scored (progress).
    """
    was_training = model.training
    model.eval()
    loss_sum, correct, total = 0.0, 0, 0
    try:
        for group in plan_micro_batches(sequences, max_micro_tokens):
            parts = packed_loss(model, pack(group))
            loss_sum += float(parts.loss_sum)
            correct += parts.correct
            total += parts.tokens
            if on_scored is not None:
                on_scored(len(group))
    finally:
        model.train(was_training)
    return loss_sum / max(total, 1), correct / max(total, 1)
