"""`tailor preset create | list | show | rm`: thin verbs over tailorlm.presets."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

import typer
import yaml
from rich.console import Console
from rich.table import Table

from tailorlm.cli import app
from tailorlm.config import get_settings
from tailorlm.errors import InvalidRequestError
from tailorlm.presets import Preset, PresetStore
from tailorlm.presets.checks import create_preset

_out = Console(width=None if sys.stdout.isatty() else 240)
_err = Console(stderr=True, soft_wrap=True)

preset_app = typer.Typer(help="Presets: a named model with its adapter, instructions, defaults and knowledge bases.",
                         no_args_is_help=True)
app.add_typer(preset_app, name="preset")


def _kb_ref(text: str) -> dict:
    """"NAME" or "NAME:K" -> a knowledge reference."""
    name, sep, k = text.rpartition(":")
    if sep and not k.isdigit():
        raise InvalidRequestError(f"--kb {text!r}: expected NAME or NAME:K (K a number)", param="kb")
    return {"name": name, "k": int(k)} if sep else {"name": text}


@preset_app.command("create")
def create(
    name: str = typer.Argument(..., help="The preset's name; creating it again stores a new version."),
    from_: str | None = typer.Option(None, "--from", help="The base model (a name from `tailor list`)."),
    file: Path | None = typer.Option(None, "-f", "--file", exists=True, dir_okay=False,
                                     help="A YAML file with model, adapter, system, parameters, knowledge."),
    adapter: str | None = typer.Option(None, "--adapter", help="A LoRA adapter (ft: name) over the base model."),
    system: str | None = typer.Option(None, "--system", help="The system prompt."),
    kb: list[str] = typer.Option([], "--kb", help="A knowledge base to retrieve from, as NAME or NAME:K (repeatable)."),
    temperature: float | None = typer.Option(None, "--temperature"),
    top_p: float | None = typer.Option(None, "--top-p"),
    max_tokens: int | None = typer.Option(None, "--max-tokens"),
) -> None:
    """Create a preset (or its next version) from flags or a YAML file; flags override the file."""
    data = (yaml.safe_load(file.read_text()) or {}) if file else {}
    if not isinstance(data, dict):
        raise InvalidRequestError(f"{file}: expected a YAML mapping")
    data["name"] = name
    params = {k: v for k, v in (("temperature", temperature), ("top_p", top_p), ("max_tokens", max_tokens))
              if v is not None}
    data["parameters"] = {**(data.get("parameters") or {}), **params}
    for key, value in (("model", from_), ("adapter", adapter), ("system", system)):
        if value is not None:
            data[key] = value
    if kb:
        data["knowledge"] = [_kb_ref(k) for k in kb]
    if not data.get("model"):
        raise InvalidRequestError("a preset needs a base model: --from MODEL, or `model:` in the file", param="model")
    stored = create_preset(get_settings(), Preset.parse(data))
    _err.print(f"created {stored.ref} (use it as model {stored.name!r})")


@preset_app.command("list")
def list_() -> None:
    """List the presets (latest versions)."""
    presets = PresetStore(get_settings().home).list()
    if not presets:
        _err.print("no presets yet; create one with `tailor preset create NAME --from MODEL`")
        return
    table = Table(box=None)
    for col in ("name", "version", "model", "adapter", "knowledge", "created"):
        table.add_column(col)
    for p in presets:
        kbs = ", ".join(f"{k.name}:{k.k}" for k in p.knowledge) or "-"
        created = datetime.fromtimestamp(p.created_at).isoformat(timespec="seconds")
        table.add_row(p.name, str(p.version), p.model, p.adapter or "-", kbs, created)
    _out.print(table)


@preset_app.command("show")
def show(ref: str = typer.Argument(..., help="NAME (the latest version) or NAME@N.")) -> None:
    """Print a preset as YAML (what `tailor preset create NAME -f` reads)."""
    preset = PresetStore(get_settings().home).get(ref)
    typer.echo(yaml.safe_dump(preset.model_dump(mode="json", exclude_none=True), sort_keys=False), nl=False)


@preset_app.command("rm")
def rm(ref: str = typer.Argument(..., help="NAME (every version) or NAME@N (that version).")) -> None:
    """Remove a preset, or one version of it."""
    name = ref.partition("@")[0]
    versions = PresetStore(get_settings().home).remove(ref)
    _err.print(f"removed {name} version{'s' if len(versions) > 1 else ''} {', '.join(map(str, versions))}")
