"""The preference shift on held-out pairs: how often, and by how much, each model prefers the preferred answer.

Each answer of a pair is scored as DPO trains on it (dpo.py): the summed log-probability of its tokens after the
rendered input, the model in training form (fp32, PEFT for an adapter). Per model:
- win rate: the share of pairs whose preferred answer has the higher log-probability (a tie is no win);
- mean margin: log p(preferred) − log p(non-preferred), in nats, averaged over the pairs.
For an adapter also DPO's implicit reward against its own base (the same model with the adapter switched off):
β · (margin tuned − margin base) per pair, at the β it was tuned with (0.1 when unknown) — its reward accuracy
(the share of pairs where the tuning moved the preference the right way) and mean reward margin.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tailorlm.chat import load_tokenizer
from tailorlm.errors import InvalidRequestError
from tailorlm.tune.data import DataReport, Example, require_method
from tailorlm.tune.evaluate import EvalRun, EvalTarget, StartPhase, _no_progress, training_form
from tailorlm.tune.jobs import DEFAULT_BETA


@dataclass
class PreferenceResult:
    name: str
    base: str
    job: str | None
    pairs: int
    win_rate: float
    mean_margin: float
    margins: list[float] = field(repr=False)  # per pair, nats
    beta: float | None = None  # adapters only: the implicit reward's β
    reward_accuracy: float | None = None
    reward_margin: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def load_pairs(report: DataReport, path: Path) -> list[Example]:
    """The pairs of a checked held-out file; every line must be a valid pair, as for training."""
    require_method(report, "dpo", "data", str(path))
    return report.examples


def preference_pass(target: EvalTarget, pairs: Sequence[Example], start: StartPhase = _no_progress) -> PreferenceResult:
    """Score every pair under `target` (and, for an adapter, under its base: the adapter switched off)."""
    from tailorlm.tune.dpo import encode_pair, reference, score_pairs
    from tailorlm.tune.packing import MAX_MICRO_TOKENS

    tokenizer = load_tokenizer(target.base_path, name=target.base.name)  # each model's own rendering
    encoded = [encode_pair(tokenizer, e.data) for e in pairs]
    model = training_form(target)
    advance = start(f"pairs {target.name}", len(encoded) * (2 if target.adapter_path else 1))
    policy = score_pairs(model, encoded, MAX_MICRO_TOKENS, advance).margins
    n = max(len(encoded), 1)
    result = PreferenceResult(target.name, target.base.name, target.job, len(encoded),
                              float((policy > 0).sum()) / n, float(policy.sum()) / n, policy.tolist())
    if target.adapter_path is not None:
        with reference(model):
            base = score_pairs(model, encoded, MAX_MICRO_TOKENS, advance).margins
        beta = target.beta or DEFAULT_BETA
        rewards = beta * (policy - base)
        result.beta = beta
        result.reward_accuracy = float((rewards > 0).sum()) / n
        result.reward_margin = float(rewards.sum()) / n
    return result


def evaluate_pairs(targets: Sequence[EvalTarget], data: Path, report: DataReport, metrics_files: dict[str, Path],
                   start: StartPhase = _no_progress) -> EvalRun:
    """`tailor eval` on a file of preference pairs: one model at a time (bounded memory)."""
    pairs = load_pairs(report, data)
    for t in targets:
        if t.preset is not None:
            raise InvalidRequestError(f"{t.name} is a preset; preference pairs score models and adapters (name the "
                                      "preset's model instead)", param="model")
    results = [preference_pass(t, pairs, start) for t in targets]
    return EvalRun(data, [], [], metrics_files, kind="preference", preference=results, pairs=list(pairs))
