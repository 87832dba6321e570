"""`tailor serve` (every setting is a flag, generated from Settings) and `tailor keys`."""

from __future__ import annotations

import inspect
import ipaddress
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from tailorlm.cli import app
from tailorlm.config import FAST_DTYPE, Settings, get_settings
from tailorlm.errors import InvalidRequestError

keys_app = typer.Typer(help="Manage API keys (stored hashed in the embedded SQLite store).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_server(settings: Settings) -> None:
    from tailorlm.db import connect
    from tailorlm.server import build_app
    from tailorlm.server.auth import KeyStore
    from tailorlm.server.lifecycle import TailorServer

    if not _is_loopback(settings.host) and not settings.insecure:
        if not KeyStore(connect(settings.db_path)).enabled():
            raise InvalidRequestError(
                f"refusing to serve on {settings.host} with no API keys: create one with `tailor keys create NAME`, "
                "or pass --insecure to serve without authentication"
            )
    TailorServer(build_app(settings), host=settings.host, port=settings.port,
                 graceful_timeout=settings.graceful_timeout).run()


def _serve(**flags: Any) -> None:
    bundle, verify = flags.pop("bundle", None), flags.pop("verify", None)
    preflight = flags.pop("preflight", True)
    config = flags.pop("config")
    if config is not None:
        if not config.is_file():
            raise InvalidRequestError(f"config file {config} does not exist")
        os.environ["TAILOR_CONFIG"] = str(config)
    given = {k: v for k, v in flags.items() if v is not None}
    if bundle is not None:  # `tailor serve FILE.tailor`: unpack (every digest verified first), serve what it holds
        from tailorlm.bundle import SUFFIX, unpack_bundle
        from tailorlm.cli.bundle import report_unpacked

        if not (bundle.is_file() and bundle.name.endswith(SUFFIX)):
            raise InvalidRequestError(f"{bundle} does not exist or is not a {SUFFIX} bundle", param="bundle")
        unpacked = unpack_bundle(Settings(**given), bundle, verify_key=verify, show_progress=sys.stderr.isatty())
        report_unpacked(unpacked, bundle)
        given.setdefault("default_model", unpacked.manifest.name)
    elif verify is not None:
        raise InvalidRequestError("--verify checks a bundle: give the .tailor file to serve", param="verify")
    settings = Settings(**given)
    if "dtype" not in settings.model_fields_set:  # serving defaults to the fastest dtype that passes the gate
        settings = settings.model_copy(update={"dtype": FAST_DTYPE})
    if preflight:  # refuse now, with the numbers, what would run out of memory later
        from tailorlm.plan.preflight import check_serve

        sized = check_serve(settings)
        if sized.line:
            typer.echo(sized.line, err=True)
        settings = sized.settings
    run_server(settings)


def _serve_signature() -> inspect.Signature:
    """One optional flag per Settings field, with its description as help: declared once, listed by --help."""
    params = [inspect.Parameter(
        "bundle", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
        annotation=Annotated[Optional[Path], typer.Argument(help="A .tailor bundle to unpack (verified) and serve.",
                                                            metavar="FILE.tailor", show_default=False)],
    ), inspect.Parameter(
        "verify", inspect.Parameter.KEYWORD_ONLY, default=None,
        annotation=Annotated[Optional[Path], typer.Option("--verify", help="Refuse the bundle unless signed by "
                                                          "this public key.", show_default=False)],
    ), inspect.Parameter(
        "preflight", inspect.Parameter.KEYWORD_ONLY, default=True,
        annotation=Annotated[bool, typer.Option("--preflight/--no-preflight", help="Refuse to start when one request "
                                                "of the default model at its full context would not fit in memory, "
                                                "and size the KV budget (kv_cache_mb) to what the model leaves "
                                                "(see `tailor plan`).")],
    ), inspect.Parameter(
        "config", inspect.Parameter.KEYWORD_ONLY, default=None,
        annotation=Annotated[Optional[Path], typer.Option("--config", help="YAML file of settings (lowest precedence).")],
    )]
    for name, field in Settings.model_fields.items():
        kind = field.annotation
        if kind is bool:
            option = typer.Option(f"--{name.replace('_', '-')}/--no-{name.replace('_', '-')}", help=field.description,
                                  show_default=False)
        else:
            option = typer.Option(f"--{name.replace('_', '-')}", help=f"{field.description} [env TAILOR_{name.upper()}]",
                                  show_default=False)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=Annotated[Optional[kind], option]))
    return inspect.Signature(params)


_serve.__signature__ = _serve_signature()  # type: ignore[attr-defined]
_serve.__doc__ = "Serve every stored model over an OpenAI-compatible API (flags override env and config file)."
app.command("serve")(_serve)


@keys_app.command("create")
def keys_create(name: Annotated[str, typer.Argument(help="A label for the key.")]) -> None:
    """Create a key; it is printed once and stored only as a digest."""
    from tailorlm.db import connect
    from tailorlm.server.auth import KeyStore

    key, secret = KeyStore(connect(get_settings().db_path)).create(name)
    typer.echo(secret)
    typer.echo(f"created {key.id} ({name}); store it now, it is not shown again", err=True)


@keys_app.command("list")
def keys_list() -> None:
    """List keys (never their secrets)."""
    from tailorlm.db import connect
    from tailorlm.server.auth import KeyStore

    table = Table("id", "name", "prefix", "created", "status")
    for k in KeyStore(connect(get_settings().db_path)).list():
        table.add_row(k.id, k.name, k.prefix + "…", str(k.created_at), "revoked" if k.revoked_at else "active")
    Console().print(table)


@keys_app.command("revoke")
def keys_revoke(key: Annotated[str, typer.Argument(help="Key id or name.")]) -> None:
    """Revoke a key at once."""
    from tailorlm.db import connect
    from tailorlm.server.auth import KeyStore

    revoked = KeyStore(connect(get_settings().db_path)).revoke(key)
    typer.echo(f"revoked {revoked.id} ({revoked.name})")
