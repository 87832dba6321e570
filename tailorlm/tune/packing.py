"""Training sequences and packed batches: no padding, loss only where the model must produce text.

Each example becomes one `Sequence`: its token ids and a same-length `trained` mask that is
True on the tokens the model learns to produce (assistant turns with weight != 0, or the
completion). Label i is token i, predicted from the hidden state at i - 1, so the loss is
taken at positions whose *next* token is trained.

A step's examples are laid end to end in one row (`pack`): positions restart at 0 for each
example and a block-diagonal causal mask keeps examples from attending to each other, so the
result is the same as running them one by one, with no pad token computed. Rows longer than a
token budget are split across micro-batches (gradient accumulation) by `plan_micro_batches`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence as Seq
from dataclasses import dataclass
from typing import Any, Sized, TypeVar

import numpy as np
import torch

from tailorlm.chat import TextTokenizer
from tailorlm.tune.data_tokens import assistant_spans, completion_ids

T = TypeVar("T", bound=Sized)
MAX_MICRO_TOKENS = 1024  # packed tokens per forward; longer steps accumulate gradients


@dataclass(frozen=True)
class Sequence:
    """One training example as tokens; `trained[i]` says token i carries loss."""

    ids: tuple[int, ...]
    trained: tuple[bool, ...]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def trained_tokens(self) -> int:
        return sum(self.trained)


def encode_example(tok: TextTokenizer, data: Mapping[str, Any]) -> Sequence:
    """Tokens and loss mask of a chat or prompt/completion example, as rendered at serving time."""
    if "messages" in data:
        ids, spans = assistant_spans(tok, data["messages"], data.get("tools"))
        trained = [False] * len(ids)
        for start, end in spans:
            trained[start:end] = [True] * (end - start)
        return Sequence(tuple(ids), tuple(trained))
    prompt, completion = completion_ids(tok, data)
    return Sequence(tuple(prompt + completion), (False,) * len(prompt) + (True,) * len(completion))


@dataclass
class PackedBatch:
    """Examples laid end to end in one row.

    `input_ids` and `position_ids` are [1, T]; `attention_mask` is a [1, 1, T, T] boolean
    block-diagonal causal mask (True = may attend); `targets` holds, for each position that
    predicts a trained token, that token (else -100), so `targets[t]` is predicted from `t`.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor
    targets: torch.Tensor
    bounds: list[int]  # where each example starts in the row, then the row's length

    @property
    def examples(self) -> int:
        return len(self.bounds) - 1

    @property
    def tokens(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def trained_tokens(self) -> int:
        return int((self.targets != -100).sum())


def pack(sequences: Seq[Sequence]) -> PackedBatch:
    """Pack `sequences` into one row with per-example positions and a block-diagonal causal mask."""
    ids: list[int] = []
    positions: list[int] = []
    targets: list[int] = []
    segment: list[int] = []
    bounds = [0]
    for k, seq in enumerate(sequences):
        n = len(seq)
        bounds.append(bounds[-1] + n)
        ids.extend(seq.ids)
        positions.extend(range(n))
        segment.extend([k] * n)
        # position t predicts token t+1 of the same example; the last token predicts nothing
        targets.extend(seq.ids[t + 1] if seq.trained[t + 1] else -100 for t in range(n - 1))
        targets.append(-100)
    seg = torch.tensor(segment)
    pos = torch.arange(len(ids))
    mask = (seg[:, None] == seg[None, :]) & (pos[None, :] <= pos[:, None])
    return PackedBatch(
        input_ids=torch.tensor([ids], dtype=torch.long),
        position_ids=torch.tensor([positions], dtype=torch.long),
        attention_mask=mask[None, None],
        targets=torch.tensor(targets, dtype=torch.long),
        bounds=bounds,
    )


def epoch_batches(n_examples: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The example indices of each optimizer step in `epoch`: a seeded shuffle cut into batches.

    Depends only on (seed, epoch), so a resumed run sees exactly the batches it would have seen.
    The last batch may be smaller; none is empty.
    """
    order = np.random.default_rng([seed, epoch]).permutation(n_examples).tolist()
    return [order[i : i + batch_size] for i in range(0, n_examples, batch_size)]


def plan_micro_batches(sequences: Seq[T], max_tokens: int) -> list[list[T]]:
    """Split one step's examples (sequences, or anything with a length in tokens) into micro-batches of at most
    `max_tokens` packed tokens each.

    Order is kept (greedy, first come first packed); an example longer than `max_tokens` on its
    own gets a micro-batch to itself rather than being cut.
    """
    groups: list[list[T]] = []
    current: list[T] = []
    size = 0
    for seq in sequences:
        if current and size + len(seq) > max_tokens:
            groups.append(current)
            current, size = [], 0
        current.append(seq)
        size += len(seq)
    if current:
        groups.append(current)
    return groups
