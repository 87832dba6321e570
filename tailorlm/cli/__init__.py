"""The `tailor` command: a thin typer shell over the store, engine and text layers."""

from __future__ import annotations

import sys

import typer

from tailorlm.errors import TailorError

app = typer.Typer(
    name="tailor",
    help="Make an open-weight language model your own and run it wherever you want.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    # Each verb group lives in its own module and adds its commands to `app`.
    from tailorlm.cli import adapters, bundle, data, evaluate, export, kb, models, plan, preset, run, serve, tune  # noqa: F401


def _quiet_libraries() -> None:
    """Library progress bars and warnings are noise on a CLI; our own progress uses rich."""
    import logging
    import os
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    logging.getLogger("tailorlm").setLevel(logging.CRITICAL)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def main() -> None:
    """Entry point: one plain line and a non-zero exit for every user error."""
    _register()
    _quiet_libraries()
    try:
        app()
    except TailorError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
