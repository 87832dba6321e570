"""`tailor kb create | add | search | list | files | rm`: thin verbs over tailorlm.kb.KnowledgeBases."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from tailorlm.cli import app
from tailorlm.cli.models import human_bytes

_out = Console(width=None if sys.stdout.isatty() else 240)  # piped: full names, not cut to 80 columns
_err = Console(stderr=True, soft_wrap=True)

kb_app = typer.Typer(help="Knowledge bases: your documents, indexed for hybrid search (OpenAI's vector stores).",
                     no_args_is_help=True)
app.add_typer(kb_app, name="kb")

_NAME = typer.Argument(..., help="A knowledge base name (or vs_… id) from `tailor kb list`.")


def _kbs():
    from tailorlm.kb import KnowledgeBases  # lazy: torch and transformers load only for kb verbs

    return KnowledgeBases()


def _table(*columns: str) -> Table:
    table = Table(box=None)
    for col in columns:
        table.add_column(col, justify="right" if col in ("files", "chunks", "size", "score", "#") else "left")
    return table


@kb_app.command("create")
def create(name: str = typer.Argument(..., help="Lower-case letters, digits and . _ : -")) -> None:
    """Create an empty knowledge base."""
    kb = _kbs().create(name)
    _err.print(f"created {kb.name} ({kb.id})")


@kb_app.command("add")
def add(name: str = _NAME,
        files: list[Path] = typer.Argument(..., help="Files to index: txt, md, html, pdf, docx, jsonl.")) -> None:
    """Extract, chunk, embed and index files; unchanged files are skipped, a failing file does not stop the rest."""
    results = _kbs().add_paths(name, files, show_progress=_err.is_terminal)
    for r in results:
        if r.status == "failed":
            _err.print(f"[red]failed[/red] {r.error}", highlight=False)
        else:
            _err.print(f"{r.status} {r.file.filename} ({r.file.chunks} chunks)", highlight=False)
    if any(r.status == "failed" for r in results):
        raise typer.Exit(1)


@kb_app.command("search")
def search(name: str = _NAME, query: str = typer.Argument(..., help="What to look for."),
           k: int = typer.Option(5, "-k", help="How many chunks to return."),
           mode: str = typer.Option("hybrid", "--mode", help="hybrid, vector or keyword.")) -> None:
    """Print the chunks that best match a query, with their file, position and heading."""
    hits = _kbs().search(name, query, k=k, mode=mode)  # type: ignore[arg-type]
    if not hits:
        _err.print("no matches")
        return
    for i, h in enumerate(hits, start=1):
        where = f"{h.filename} #{h.position}" + (f" · {h.heading}" if h.heading else "")
        _out.print(f"[bold]{i}. {where}[/bold]  score {h.score:.3f}", highlight=False)
        _out.print(h.text.strip(), markup=False, highlight=False)
        _out.print()


@kb_app.command("list")
def list_() -> None:
    """List the knowledge bases."""
    bases = _kbs().list()
    if not bases:
        _err.print("no knowledge bases yet; create one with `tailor kb create NAME`")
        return
    table = _table("name", "id", "files", "chunks", "size")
    for kb in bases:
        table.add_row(kb.name, kb.id, str(kb.files), str(kb.chunks), human_bytes(kb.bytes))
    _out.print(table)


@kb_app.command("files")
def files(name: str = _NAME) -> None:
    """List the files of a knowledge base."""
    table = _table("id", "filename", "status", "chunks", "size")
    for f in _kbs().files(name):
        table.add_row(f.id, f.filename, f.status if not f.error else f"failed: {f.error}", str(f.chunks),
                      human_bytes(f.bytes))
    _out.print(table)


@kb_app.command("rm")
def rm(name: str = _NAME) -> None:
    """Remove a knowledge base and its index (the original files are not touched)."""
    _kbs().remove(name)
    _err.print(f"removed {name}")
