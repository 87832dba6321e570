"""`tailor pull | import | list | show | rm`: thin verbs over tailorlm.store.ModelStore."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from tailorlm.cli import app
from tailorlm.errors import ModelNotFoundError
from tailorlm.store import Manifest, ModelStore

# Piped output keeps full digests and names instead of being cut to 80 columns.
_out = Console(width=None if sys.stdout.isatty() else 240)
_err = Console(stderr=True, soft_wrap=True)


def human_count(n: int) -> str:
    """134515008 -> "134.5M"."""
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def human_bytes(n: int) -> str:
    """538060800 -> "538.1 MB" (decimal units, as download sizes are quoted)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _summary(verb: str, m: Manifest) -> None:
    _err.print(f"{verb} [bold]{m.name}[/bold]: {m.architecture}, {human_count(m.parameters)} parameters, "
               f"{human_bytes(m.size)} ({m.source})")


@app.command("pull")
def pull(
    ref: str = typer.Argument(..., help="An embedded default (smollm2-135m-instruct) or a hub repo ORG/NAME."),
    force: bool = typer.Option(False, "--force", help="Replace the model if it is already in the store."),
) -> None:
    """Fetch a model into the local store; a model already there is verified, not fetched again."""
    store = ModelStore()
    if not force:
        try:
            present = store.get(ref)
        except ModelNotFoundError:
            present = None
        if present is not None:
            store.verify(present.name)
            _summary("already in the store, digests verified:", present)
            return
    _summary("pulled", store.pull(ref, overwrite=force))


@app.command("import")
def import_(
    path: Path = typer.Argument(..., help="A Hugging Face model folder or a .gguf file."),
    name: str | None = typer.Option(None, "--name", help="Store it under this name (default: from the path)."),
    allow_pickle: bool = typer.Option(
        False, "--allow-pickle", help="Accept pickle weights (they can run code); they are converted to safetensors."
    ),
    force: bool = typer.Option(False, "--force", help="Replace a model of the same name."),
) -> None:
    """Import a local model (HF folder or GGUF) into the store, as safetensors."""
    _summary("imported", ModelStore().import_path(path, name=name, allow_pickle=allow_pickle, overwrite=force))


@app.command("list")
def list_(as_json: bool = typer.Option(False, "--json", help="Print the manifests as JSON.")) -> None:
    """List the models in the local store."""
    models = ModelStore().list()
    if as_json:
        typer.echo(json.dumps([m.model_dump() for m in models], indent=2))
        return
    if not models:
        _err.print("no models yet; fetch the default with `tailor pull smollm2-135m-instruct`")
        return
    table = Table(box=None)
    for col, justify in (("name", "left"), ("architecture", "left"), ("params", "right"), ("context", "right"),
                         ("dtype", "left"), ("license", "left"), ("chat template", "left"), ("size", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for m in models:
        table.add_row(
            m.name, m.architecture, human_count(m.parameters), str(m.context_length or "-"), m.dtype or "-",
            m.license or "-", "yes" if m.has_chat_template else "no", human_bytes(m.size),
        )
    _out.print(table)


@app.command("show")
def show(
    name: str = typer.Argument(..., help="A model name from `tailor list`."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """Show a model's manifest: origin, shape, license and the digest of every file."""
    store = ModelStore()
    m = store.get(name)
    if as_json:
        typer.echo(m.model_dump_json(indent=2))
        return
    facts = Table.grid(padding=(0, 2))
    for key, value in (
        ("name", m.name), ("path", str(store.path(m.name))), ("source", m.source),
        ("architecture", m.architecture), ("model type", m.model_type),
        ("parameters", f"{human_count(m.parameters)} ({m.parameters:,})"), ("context", str(m.context_length or "-")),
        ("dtype", m.dtype or "-"), ("license", m.license or "unknown"),
        ("chat template", "yes" if m.has_chat_template else "no"), ("created", m.created_at),
        ("size", human_bytes(m.size)),
    ):
        facts.add_row(f"[bold]{key}[/bold]", value)
    _out.print(facts)
    files = Table("file", "size", "sha256", box=None)
    for rel, digest in m.files.items():
        files.add_row(rel, human_bytes(digest.size), digest.sha256)
    _out.print(files)


@app.command("rm")
def rm(name: str = typer.Argument(..., help="A model name from `tailor list`.")) -> None:
    """Remove a model from the local store."""
    ModelStore().remove(name)
    _err.print(f"removed {name}")
