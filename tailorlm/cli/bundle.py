"""`tailor pack`, `tailor unpack` and `tailor keygen`: thin verbs over tailorlm.bundle."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from tailorlm.cli import app
from tailorlm.config import get_settings

if TYPE_CHECKING:
    from tailorlm.bundle import Unpacked


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n} B"


@app.command("pack")
def pack(
    name: Annotated[str, typer.Argument(help="A stored model, an ft: adapter (its base comes too), or a preset "
                                             "(NAME or NAME@N: its model, adapter and knowledge bases come too).")],
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="The bundle file (default ./NAME.tailor).")]
    = None,
    sign: Annotated[Optional[Path], typer.Option("--sign", help="Sign with this Ed25519 private key "
                                                                "(from `tailor keygen`).")] = None,
    report: Annotated[Optional[Path], typer.Option("--report", help="An eval report folder to include "
                                                                    "(`tailor eval --out DIR`).")] = None,
) -> None:
    """Write one file holding everything needed to run NAME on another machine."""
    from tailorlm.bundle import pack_bundle

    path, manifest = pack_bundle(get_settings(), name, output, sign_key=sign, report=report,
                                 show_progress=sys.stderr.isatty())
    total = sum(d.size for d in manifest.members.values())
    typer.echo(f"packed {manifest.kind} {manifest.name} ({len(manifest.members)} files, {_size(total)})"
               f"{', signed' if sign else ''} into {path}", err=True)


@app.command("unpack")
def unpack(
    file: Annotated[Path, typer.Argument(help="A .tailor bundle.")],
    verify: Annotated[Optional[Path], typer.Option("--verify", help="Refuse the bundle unless it is signed by the "
                                                                    "key of this public key file.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace items of the same name that differ.")] = False,
) -> None:
    """Verify every file of a bundle, then add what it holds to the store."""
    from tailorlm.bundle import unpack_bundle

    result = unpack_bundle(get_settings(), file, verify_key=verify, force=force, show_progress=sys.stderr.isatty())
    report_unpacked(result, file)


def report_unpacked(result: Unpacked, file: Path) -> None:
    """One line per item, or one line saying nothing changed."""
    target = result.manifest
    if result.unchanged:
        typer.echo(f"{target.kind} {target.name} from {file.name} is already in the store; nothing to do", err=True)
        return
    for outcome in result.outcomes:
        typer.echo(f"{outcome.status} {outcome.item.kind.replace('_', ' ')} {outcome.item.name}", err=True)
    typer.echo(f"unpacked {target.kind} {target.name} from {file.name}", err=True)


@app.command("keygen")
def keygen(path: Annotated[Path, typer.Argument(help="Where to write the private key; the public key goes to "
                                                     "PATH.pub.")]) -> None:
    """Make an Ed25519 key pair for signing bundles (`tailor pack --sign PATH`, `--verify PATH.pub`)."""
    from tailorlm.bundle import keygen as make_keys

    private, public = make_keys(path)
    typer.echo(f"wrote private key {private} (keep it secret) and public key {public}", err=True)
