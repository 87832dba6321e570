"""`tailor eval MODEL [MODEL…] --data FILE`: compare models on held-out chat examples or preference pairs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tailorlm.cli import app

_out = Console(width=None if sys.stdout.isatty() else 200)
_err = Console(stderr=True, soft_wrap=True)


@app.command("eval")
def eval_(
    models: Annotated[list[str], typer.Argument(metavar="MODEL", help="Stored models or adapters (ft:...) to compare.")],
    data: Annotated[Path, typer.Option("--data", "-d", help="Held-out chat JSONL, or preference pairs (same formats as "
                                                              "training data).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for report.md, loss.png and results.json.")] = Path("eval-report"),
    max_new_tokens: Annotated[Optional[int], typer.Option(
        "--max-new-tokens", min=1, help="Most tokens per answer (default: 2 × the longest reference, at least 64).")] = None,
    examples: Annotated[int, typer.Option("--examples", min=0, help="Answers shown side by side in the report.")] = 5,
) -> None:
    """Validation loss, perplexity, exact match, token F1 and JSON validity of each MODEL on --data; on preference
    pairs, each MODEL's win rate and margin, and an adapter's reward accuracy and margin against its base."""
    from tailorlm.tune.eval_report import table, write_report
    from tailorlm.tune.evaluate import evaluate

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=_err, disable=not sys.stderr.isatty())

    def start(description: str, total: int):
        task = progress.add_task(description, total=total)
        return lambda n: progress.advance(task, n)

    with progress:
        run = evaluate(models, data, max_new_tokens=max_new_tokens, start=start)
    paths = write_report(run, out, shown=examples)

    columns, rows = table(run)
    grid = Table(title=f"{len(run.pairs)} preference pairs from {data}" if run.kind == "preference"
                 else f"{len(run.examples)} examples from {data}")
    for i, col in enumerate(columns):
        grid.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        grid.add_row(*row)
    _out.print(grid)
    _err.print("wrote " + ", ".join(str(p) for p in paths))
