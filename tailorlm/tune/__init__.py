"""Fine-tuning: LoRA on OpenAI fine-tuning JSONL. data*.py check and tokenize the data, packing.py builds batches,
trainer.py runs the loop (frozen.py: the frozen base, loss.py, attention.py), checkpoint.py saves and resumes,
jobs.py and worker.py run it as an OpenAI fine-tuning job, evaluate.py and eval_report.py compare tuned and base.
"""

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
