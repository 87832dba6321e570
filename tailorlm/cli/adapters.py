"""`tailor adapters list | rm`: thin verbs over tailorlm.store.AdapterStore."""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.table import Table

from tailorlm.cli import app
from tailorlm.cli.models import human_bytes
from tailorlm.store import AdapterStore

_out = Console(width=None if sys.stdout.isatty() else 240)  # piped: full names, not cut to 80 columns
_err = Console(stderr=True, soft_wrap=True)

adapters_app = typer.Typer(help="LoRA adapters (fine-tuned models) served over their base models.",
                           no_args_is_help=True)
app.add_typer(adapters_app, name="adapters")


@adapters_app.command("list")
def list_() -> None:
    """List the stored adapters."""
    adapters = AdapterStore().list()
    if not adapters:
        _err.print("no adapters yet; fine-tuning a model stores one")
        return
    table = Table(box=None)
    for col, justify in (("name", "left"), ("base", "left"), ("rank", "right"), ("size", "right"),
                         ("created", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for a in adapters:
        table.add_row(a.name, a.base, str(a.rank), human_bytes(a.size), a.created_at)
    _out.print(table)


@adapters_app.command("rm")
def rm(name: str = typer.Argument(..., help="An adapter name from `tailor adapters list`.")) -> None:
    """Remove an adapter from the local store."""
    AdapterStore().remove(name)
    _err.print(f"removed {name}")
