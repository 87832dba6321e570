"""Fine-tuning: data validation (more to come: dataset building, training loop, checkpoints, jobs)."""

from tailorlm.tune.data import DataReport, Example, Problem, check_file
from tailorlm.tune.data_stats import TRAIN_TOKENS_PER_SECOND, DataStats, auto_epochs
from tailorlm.tune.data_tokens import assistant_spans

__all__ = [
    "TRAIN_TOKENS_PER_SECOND",
    "DataReport",
    "DataStats",
    "Example",
    "Problem",
    "assistant_spans",
    "auto_epochs",
    "check_file",
]
