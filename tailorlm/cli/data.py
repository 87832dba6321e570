"""`tailor data check FILE`: validate a fine-tuning JSONL file (chat, prompt/completion or preference pairs)
before training on it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from tailorlm.cli import app

data_app = typer.Typer(name="data", help="Check fine-tuning data.", no_args_is_help=True)
app.add_typer(data_app, name="data")

_out = Console(width=None if sys.stdout.isatty() else 200)
_err = Console(stderr=True, soft_wrap=True)


def _duration(seconds: float) -> str:
    """3725 -> "1 h 2 min"; rounds to what an estimate deserves."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


@data_app.command("check")
def check(
    file: Annotated[Path, typer.Argument(help="JSONL file: chat ({\"messages\": ...}), {\"prompt\", \"completion\"} "
                                              "or preference pairs ({\"input\", \"preferred_output\", "
                                              "\"non_preferred_output\"}).")],
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Base model (default: the embedded one).")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", min=1, help="Epochs for the estimate (default: auto).")] = None,
    method: Annotated[Optional[str], typer.Option(
        "--method", help="supervised or dpo: the file must suit it (default: whichever its lines are for).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Report what is wrong in FILE, line by line, with token counts for MODEL; exit 1 on any error."""
    from tailorlm.chat import load_tokenizer
    from tailorlm.config import get_settings
    from tailorlm.errors import InvalidRequestError
    from tailorlm.store import ModelStore
    from tailorlm.tune import Problem, check_file
    from tailorlm.tune.data import method_mismatch

    from tailorlm.runtime.resolve import resolve, stored

    if method not in (None, "supervised", "dpo"):
        raise InvalidRequestError(f"--method must be supervised or dpo, not {method!r}", param="method")
    store = ModelStore()
    manifest = stored(resolve(model, get_settings()), get_settings(), show_progress=sys.stderr.isatty())
    tokenizer = load_tokenizer(store.path(manifest.name), name=manifest.name)
    report = check_file(file, tokenizer, manifest.context_length, epochs=epochs)
    mismatch = method_mismatch(report, method) if method else None
    if mismatch:
        report.problems.insert(0, Problem(None, "error", f"the file {mismatch}"))
    if as_json:
        print(json.dumps({"model": manifest.name, "context_length": manifest.context_length, **report.to_dict()},
                         ensure_ascii=False))
    else:
        print_report(report, manifest.name, manifest.context_length, auto=epochs is None)
    raise typer.Exit(0 if report.ok else 1)


def print_report(report, model: str, context_length: int | None, auto: bool) -> None:  # report: DataReport
    if report.problems:
        table = Table(title=f"Problems in {report.path}")
        for col, kw in (("line", {"justify": "right"}), ("severity", {}), ("message", {"overflow": "fold"})):
            table.add_column(col, **kw)
        for p in report.problems:
            style = "red" if p.severity == "error" else "yellow"
            table.add_row("-" if p.line is None else str(p.line), f"[{style}]{p.severity}[/{style}]", p.message)
        _out.print(table)
    from tailorlm.tune.data import LABELS

    s = report.stats
    pairs = report.format == "preference"
    rows = [
        ("format", LABELS[report.format] + (" (for method dpo)" if pairs else "")),
        ("model", f"{model} (context {context_length or 'unknown'})"),
        ("pairs" if pairs else "examples", f"{s.examples}: {s.valid} valid, {len(s.dropped)} "
                                           f"{'invalid (a dpo job needs none)' if pairs else 'dropped'}"),
        ("tokens", f"{s.total_tokens:,} total, {s.trainable_tokens:,} trainable"),
        ("example length", f"min {s.min_tokens}, mean {s.mean_tokens:.1f}, max {s.max_tokens} tokens"),
        ("training", f"{s.training_tokens:,} tokens over {s.epochs} epochs" + (" (auto)" if auto else "")),
        ("estimated time", f"~{_duration(s.estimated_seconds)} (estimate: {s.tokens_per_second:.0f} tokens/s, "
                           "the default model on a 2-core CPU)"),
    ]
    summary = Table(show_header=False, box=None)
    summary.add_column(style="bold")
    summary.add_column()
    for key, value in rows:
        summary.add_row(key, value)
    _out.print(summary)
    errors, warnings = len(report.errors), len(report.warnings)
    verdict = "[green]ok[/green]" if report.ok else f"[red]{errors} error{'s' * (errors != 1)}[/red]"
    _out.print(f"{verdict}, {warnings} warning{'s' * (warnings != 1)}")
