"""Write what `evaluate` measured: report.md (a table, then answers side by side — or, on preference pairs, the
preference shift and the pairs), loss.png, results.json."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from tailorlm.tune.evaluate import EvalRun, ModelResult, message_text
from tailorlm.tune.evaluate_preference import PreferenceResult
from tailorlm.tune.metrics import read_metrics

REPORT_FILE, CHART_FILE, RESULTS_FILE = "report.md", "loss.png", "results.json"
SHOWN_EXAMPLES = 5  # answers shown side by side in the report


def write_report(run: EvalRun, out: Path, shown: int = SHOWN_EXAMPLES) -> list[Path]:
    """Write the report files into `out` (created if needed); the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    chart = out / CHART_FILE
    if loss_chart(run.metrics_files, chart):
        written.append(chart)
    elif chart.exists():
        chart.unlink()  # a chart left by an earlier report would not belong to this one
    text = (preference_markdown if run.kind == "preference" else markdown)(run, shown, chart.name if written else None)
    _write(out / REPORT_FILE, text)
    _write(out / RESULTS_FILE, json.dumps(results_dict(run), indent=1, ensure_ascii=False, allow_nan=False) + "\n")
    return [out / REPORT_FILE, *written, out / RESULTS_FILE]


def results_dict(run: EvalRun) -> dict[str, Any]:
    if run.kind == "preference":
        return {"data": str(run.data), "kind": "preference", "pairs": len(run.pairs),
                "lines": [e.line for e in run.pairs], "models": [_finite(r.to_dict()) for r in run.preference],
                "metrics_files": {name: str(path) for name, path in run.metrics_files.items()}}
    return {
        "data": str(run.data),
        "examples": len(run.examples),
        "references": [e.reference for e in run.examples],
        "lines": [e.line for e in run.examples],
        "models": [_finite(r.to_dict()) for r in run.results],
        "metrics_files": {name: str(path) for name, path in run.metrics_files.items()},
    }


def _finite(row: dict[str, Any]) -> dict[str, Any]:
    """JSON has no infinity: a perplexity that overflowed is written as null."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}


# -- the table -------------------------------------------------------------------------------------
COLUMNS = ("model", "valid loss", "perplexity", "exact match", "token F1", "JSON parse rate")


def table_rows(results: list[ModelResult]) -> list[tuple[str, ...]]:
    """One row of formatted cells per model, in COLUMNS order (the Markdown and the console table share it)."""
    return [(r.name, f"{r.valid_loss:.4f}", f"{r.perplexity:.2f}", f"{r.scores.exact_match:.1%}",
             f"{r.scores.token_f1:.3f}", json_rate(r)) for r in results]


PREFERENCE_COLUMNS = ("model", "pairs", "win rate", "mean log-prob margin", "reward accuracy vs base",
                      "mean reward margin vs base")


def table(run: EvalRun) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """The run's columns and rows (the Markdown and the console table share them)."""
    if run.kind == "preference":
        return PREFERENCE_COLUMNS, preference_rows(run.preference)
    return COLUMNS, table_rows(run.results)


def preference_rows(results: list[PreferenceResult]) -> list[tuple[str, ...]]:
    def reward(value: float | None, fmt: str) -> str:
        return "— (the base itself)" if value is None else format(value, fmt)

    return [(r.name, str(r.pairs), f"{r.win_rate:.1%}", f"{r.mean_margin:+.2f}", reward(r.reward_accuracy, ".1%"),
             reward(r.reward_margin, "+.3f") + (f" (β {r.beta:g})" if r.beta is not None else ""))
            for r in results]


def json_rate(r: ModelResult) -> str:
    s = r.scores
    if not s.json_examples:
        return "n/a (no JSON references)"
    return f"{s.json_parse_rate:.0%} ({s.json_parsed}/{s.json_examples})"


def _cell(text: str) -> str:
    """Text that stays inside one Markdown table cell."""
    return text.strip().replace("|", "\\|").replace("\r\n", "\n").replace("\n", "<br>") or "*(empty)*"


def markdown(run: EvalRun, shown: int, chart: str | None) -> str:
    lines = [f"# Evaluation on `{run.data.name}`", "",
             f"{len(run.examples)} held-out chat examples from `{run.data}`. Loss and perplexity are on the "
             "assistant tokens (as in training); answers are greedy, scored against the last assistant message.",
             "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in table_rows(run.results)]
    lines.append("")
    budgets = sorted({r.max_new_tokens for r in run.results})
    cut = [f"{r.name}: {r.truncated}" for r in run.results if r.truncated]
    lines.append(f"At most {', '.join(map(str, budgets))} new tokens per answer"
                 + (f"; answers cut at that limit — {', '.join(cut)}." if cut else "; no answer reached it."))
    if chart:
        lines += ["", "## Training curves", "", f"![training and validation loss]({chart})"]
    if shown > 0 and run.examples:
        lines += ["", "## Examples", "", "| question | reference | " + " | ".join(_cell(r.name) for r in run.results)
                  + " |", "|" + "---|" * (2 + len(run.results))]
        for i, example in enumerate(run.examples[:shown]):
            cells = [example.question, example.reference, *(r.predictions[i] for r in run.results)]
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def preference_markdown(run: EvalRun, shown: int, chart: str | None) -> str:
    lines = [f"# Preference evaluation on `{run.data.name}`", "",
             f"{len(run.pairs)} held-out preference pairs from `{run.data}`. Each answer is scored by the summed "
             "log-probability of its tokens after the rendered input, as DPO trains on it. Win rate: the share of "
             "pairs whose preferred answer the model finds more likely; margin: log p(preferred) − "
             "log p(non-preferred), in nats. For an adapter, DPO's implicit reward against its base (the adapter "
             "switched off): β × (its margin − the base's); reward accuracy is the share of pairs it moved the "
             "right way.", "", "| " + " | ".join(PREFERENCE_COLUMNS) + " |", "|" + "---|" * len(PREFERENCE_COLUMNS)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in preference_rows(run.preference)]
    if chart:
        lines += ["", "## Training curves", "", f"![training and validation loss]({chart})"]
    if shown > 0 and run.pairs:
        lines += ["", "## Pairs", "", "| question | preferred | non-preferred | "
                  + " | ".join(_cell(f"{r.name} margin") for r in run.preference) + " |",
                  "|" + "---|" * (3 + len(run.preference))]
        for i, pair in enumerate(run.pairs[:shown]):
            data = pair.data
            cells = [message_text(data["input"]["messages"][-1]), message_text(data["preferred_output"][0]),
                     message_text(data["non_preferred_output"][0]), *(f"{r.margins[i]:+.2f}" for r in run.preference)]
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


# -- the chart -------------------------------------------------------------------------------------
def loss_chart(metrics_files: dict[str, Path], path: Path) -> bool:
    """Plot each model's training loss per step and validation loss per epoch; False when nothing to plot."""
    curves = {name: read_metrics(p) for name, p in metrics_files.items()}
    curves = {name: rows for name, rows in curves.items() if any(r.get("train_loss") is not None for r in rows)}
    if not curves:
        return False
    from matplotlib.figure import Figure  # the object API: no pyplot state, no GUI backend

    fig = Figure(figsize=(8, 4.5), dpi=100)
    ax = fig.subplots()
    for k, (name, rows) in enumerate(curves.items()):
        color = f"C{k % 10}"
        train = [(r["step"], r["train_loss"]) for r in rows if r.get("train_loss") is not None]
        valid = [(r["step"], r["valid_loss"]) for r in rows if r.get("valid_loss") is not None]
        ax.plot(*zip(*train), color=color, linewidth=1.2, label=f"{name} train")
        if valid:
            ax.plot(*zip(*valid), color=color, linestyle="--", marker="o", label=f"{name} valid (per epoch)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (assistant tokens)")
    ax.set_title("Fine-tuning loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
    return True


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
