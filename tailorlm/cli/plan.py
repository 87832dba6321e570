"""`tailor plan MODEL`: will this model, at this context and parallelism, fit a machine, and how fast will it decode?

Exit 0 when it fits, 1 when it does not (one line, then the table), 2 for bad input (one plain line).
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer
from rich.console import Console

from tailorlm.cli import app
from tailorlm.config import get_settings
from tailorlm.errors import TailorError
from tailorlm.plan.estimate import QUANTS
from tailorlm.plan.targets import TARGET_NAMES, THIS_MACHINE

_out = Console(width=None if sys.stdout.isatty() else 160)


@app.command("plan")
def plan(
    model: Annotated[str, typer.Argument(help="A stored model, or an adapter (ft:...) planned over its base.")],
    context: Annotated[Optional[int], typer.Option(
        "--context", help="Tokens per request (prompt + output); default: the model's context length.")] = None,
    parallel: Annotated[int, typer.Option("--parallel", help="Requests decoded together (serve's --max-batch).")] = 1,
    quant: Annotated[Optional[str], typer.Option(
        "--quant", help=f"Plan an export at this precision: {', '.join(QUANTS)}; default: as stored.")] = None,
    target: Annotated[str, typer.Option(
        "--target", help=f"Machine to plan for: {', '.join(TARGET_NAMES)}.")] = THIS_MACHINE,
    as_json: Annotated[bool, typer.Option("--json", help="Print the estimate as one JSON object.")] = False,
) -> None:
    """Estimate memory (weights + KV cache + adapters + runtime) and decode tok/s, and say whether it fits."""
    from tailorlm.plan.report import show, verdict_line
    from tailorlm.plan.stored import plan_stored
    from tailorlm.plan.targets import get_target

    settings = get_settings()
    try:
        machine = get_target(target, settings.home, settings.threads)
        est = plan_stored(model, home=settings.home, target=machine, context=context, parallel=parallel,
                          quant=quant, prefix_cache_bytes=settings.prefix_cache_mb * 2**20)
    except TailorError as exc:  # bad input: unknown model, target, quantization, context beyond the model's
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(est.to_json(), indent=2))
    else:
        show(est, _out)
    if not est.fits:
        if as_json:
            typer.echo(verdict_line(est), err=True)
        raise typer.Exit(1)
