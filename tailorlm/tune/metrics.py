"""The per-step metrics file, like OpenAI's fine-tuning result file (step, losses, accuracies), plus ours."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any

COLUMNS = ["step", "epoch", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy",
           "learning_rate", "tokens", "trained_tokens", "tokens_per_second", "elapsed_seconds"]


class MetricsFile:
    """Append-only CSV of `columns` (COLUMNS: supervised; a DPO job's: tune/dpo.py); `truncate_after(step)`
    drops rows a resumed run will write again."""

    def __init__(self, path: Path, columns: list[str] = COLUMNS) -> None:
        self.path, self.columns = path, columns
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w", newline="") as fh:
                csv.writer(fh).writerow(columns)

    def append(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", newline="") as fh:
            csv.writer(fh).writerow([_fmt(row.get(c)) for c in self.columns])
            fh.flush()
            os.fsync(fh.fileno())

    def rows(self) -> list[dict[str, float | None]]:
        return read_metrics(self.path)

    def truncate_after(self, step: int) -> None:
        """Keep the header and rows with step <= `step` (an epoch's validation row has that epoch's last step)."""
        with open(self.path, newline="") as fh:
            lines = list(csv.reader(fh))
        keep = [lines[0]] + [r for r in lines[1:] if r and int(float(r[0])) <= step]
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", newline="") as fh:
            csv.writer(fh).writerows(keep)
        os.replace(tmp, self.path)


def read_metrics(path: Path) -> list[dict[str, float | None]]:
    """Rows of a metrics CSV as numbers (None where a cell is empty)."""
    with open(path, newline="") as fh:
        return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()} for row in csv.DictReader(fh)]


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
