"""Summary numbers of a checked training file: sizes, token counts, epochs and a time estimate."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

# Training throughput of the default model (SmolLM2-135M) on a 2-core CPU: an estimate, not a promise.
TRAIN_TOKENS_PER_SECOND = 600.0
# A DPO step runs the reference (the base, adapter off) forward over the pair besides the policy's forward and
# backward: about 4/3 of a supervised step's work per token.
DPO_COST = 4 / 3
# OpenAI's "auto" epochs: aim for 3 passes, but see at least ~100 and at most ~25,000 examples in all.
TARGET_EPOCHS, MIN_TARGET_EXAMPLES, MAX_TARGET_EXAMPLES, MIN_EPOCHS, MAX_EPOCHS = 3, 100, 25_000, 1, 25


class _Sized(Protocol):
    tokens: int
    trainable_tokens: int


def auto_epochs(n_examples: int) -> int:
    """The epochs OpenAI picks by default for `n_examples` (3 for most files; more for tiny ones)."""
    if n_examples <= 0:
        return TARGET_EPOCHS
    if n_examples * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_EPOCHS, MIN_TARGET_EXAMPLES // n_examples)
    if n_examples * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(MIN_EPOCHS, MAX_TARGET_EXAMPLES // n_examples)
    return TARGET_EPOCHS


@dataclass
class DataStats:
    """Counts over the valid examples; `dropped` names every invalid line with its first reason."""

    examples: int = 0
    valid: int = 0
    dropped: list[tuple[int, str]] = field(default_factory=list)
    total_tokens: int = 0
    trainable_tokens: int = 0
    min_tokens: int = 0
    mean_tokens: float = 0.0
    max_tokens: int = 0
    epochs: int = TARGET_EPOCHS
    training_tokens: int = 0  # every token of every valid example, once per epoch
    tokens_per_second: float = TRAIN_TOKENS_PER_SECOND
    estimated_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["dropped"] = [{"line": line, "reason": reason} for line, reason in self.dropped]
        out["mean_tokens"] = round(self.mean_tokens, 1)
        out["estimated_seconds"] = round(self.estimated_seconds, 1)
        return out


def summarize(examples: int, valid: Sequence[_Sized], dropped: list[tuple[int, str]], epochs: int | None = None,
              tokens_per_second: float = TRAIN_TOKENS_PER_SECOND) -> DataStats:
    """Stats of a file with `examples` non-blank lines, of which `valid` passed."""
    lengths = [e.tokens for e in valid]
    n_epochs = epochs if epochs is not None else auto_epochs(len(valid))
    total = sum(lengths)
    return DataStats(
        examples=examples, valid=len(valid), dropped=list(dropped),
        total_tokens=total, trainable_tokens=sum(e.trainable_tokens for e in valid),
        min_tokens=min(lengths, default=0), mean_tokens=total / len(lengths) if lengths else 0.0,
        max_tokens=max(lengths, default=0), epochs=n_epochs, training_tokens=total * n_epochs,
        tokens_per_second=tokens_per_second, estimated_seconds=total * n_epochs / tokens_per_second,
    )
