"""`tailor tune BASE --data FILE …` and `tailor tune --resume JOB`: a fine-tuning job run in the foreground;
`tailor tune --pause JOB`: pause a job wherever it trains.

The CLI takes the same path as the API: the files go into the file store, a job row is
created, and `tailorlm.tune.worker.run_job` runs it — here in this process, with a progress bar.
A file of preference pairs makes it a DPO job. Ctrl-C stops at the next step, keeps a checkpoint and
says how to resume.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from tailorlm.cli import app
from tailorlm.errors import InvalidRequestError

_err = Console(stderr=True, soft_wrap=True)


def _auto_or(value: str, kind: type, option: str) -> int | float | str:
    """Parse an "N|auto" option value."""
    if value == "auto":
        return "auto"
    try:
        number = kind(value)
    except ValueError:
        raise InvalidRequestError(f"{option} must be a number or 'auto', not {value!r}", param=option) from None
    if number <= 0:
        raise InvalidRequestError(f"{option} must be greater than 0", param=option)
    return number


@app.command("tune")
def tune(
    base: Annotated[Optional[str], typer.Argument(help="Base model in the store (default: the embedded one).")] = None,
    data: Annotated[Optional[Path], typer.Option(
        "--data", "-d", help="Training JSONL: chat or prompt/completion (supervised), or preference pairs (DPO).")] = None,
    validation: Annotated[Optional[Path], typer.Option("--validation", help="Validation JSONL, scored each epoch.")] = None,
    suffix: Annotated[Optional[str], typer.Option("--suffix", help="Name part of the result: ft:BASE:SUFFIX:JOB.")] = None,
    epochs: Annotated[str, typer.Option("--epochs", help="Passes over the data, or auto.")] = "auto",
    batch_size: Annotated[str, typer.Option("--batch-size", help="Examples per optimizer step, or auto.")] = "auto",
    lr_multiplier: Annotated[str, typer.Option("--learning-rate-multiplier", help="Scales the default learning rate, or auto.")] = "auto",
    beta: Annotated[Optional[str], typer.Option(
        "--beta", help="DPO's beta, in (0, 2], or auto (0.1): how far from the base the preferences may pull.")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Same seed, same data, same result.")] = None,
    method: Annotated[str, typer.Option("--method", help="lora (an adapter over the base) or full.")] = "lora",
    lora_rank: Annotated[int, typer.Option("--lora-rank", min=1, max=512, help="LoRA rank.")] = 16,
    resume: Annotated[Optional[str], typer.Option("--resume", help="Continue job JOB from its last checkpoint.")] = None,
    pause: Annotated[Optional[str], typer.Option(
        "--pause", help="Pause job JOB (trained here or by a server) at its next step, keeping a checkpoint.")] = None,
) -> None:
    """Fine-tune BASE on --data; the result is served as ft:BASE:SUFFIX:JOB."""
    from tailorlm.config import get_settings
    from tailorlm.db import connect
    from tailorlm.tune.jobs import JobStore

    settings = get_settings()
    jobs = JobStore(connect(settings.db_path))
    if pause:
        if data or base or validation or resume:
            raise InvalidRequestError("--pause takes a job id alone; drop BASE, --data, --validation and --resume")
        job = jobs.request_pause(pause)
        _err.print(f"job {job.id}: " + ("paused" if job.status == "paused" else
                                        f"{job.status}; it pauses at its next step, keeping a checkpoint")
                   + f". Continue it with: tailor tune --resume {job.id}")
        return
    if resume:
        if data or base or validation:
            raise InvalidRequestError("--resume continues a job as it was created; drop BASE, --data and --validation")
        current = jobs.get(resume)
        if current.pause_requested and current.status != "paused" and current.leased:
            jobs.request_resume(resume)  # its trainer has not reached the pause yet: it just goes on
            _err.print(f"job {resume}: the pause is withdrawn; {current.lease_owner} goes on training it")
            return
        job = _prepare_resume(jobs, resume)
    else:
        job = _create(settings, jobs, base, data, validation, suffix, epochs, batch_size, lr_multiplier,
                      seed, method, lora_rank, beta)
    _err.print(f"job [bold]{job.id}[/bold]: metrics in {settings.jobs_dir / job.id / 'metrics.csv'}")
    _run(settings, job.id)


def _create(settings, jobs, base, data, validation, suffix, epochs, batch_size, lr_multiplier, seed, method,
            lora_rank, beta):
    from tailorlm.chat import load_tokenizer
    from tailorlm.cli.data import print_report
    from tailorlm.files import FileStore
    from tailorlm.runtime.resolve import base_model
    from tailorlm.store import ModelStore
    from tailorlm.tune import check_file
    from tailorlm.tune.data import require_method
    from tailorlm.tune.jobs import DPOHyperparameters, Hyperparameters

    if data is None:
        raise InvalidRequestError("give the training data with --data FILE (or --resume JOB)", param="data")
    if method not in ("lora", "full"):
        raise InvalidRequestError(f"--method must be lora or full, not {method!r}", param="method")
    store = ModelStore(settings.home)
    manifest = base_model(base, settings, "tuning", show_progress=sys.stderr.isatty())
    tokenizer = load_tokenizer(store.path(manifest.name), name=manifest.name)
    n_epochs = _auto_or(epochs, int, "--epochs")
    reports = [check_file(path, tokenizer, manifest.context_length, epochs=n_epochs if n_epochs != "auto" else None)
               for path in filter(None, (data, validation))]
    kind = "dpo" if reports[0].format == "preference" else "supervised"  # the training file decides the method
    if kind == "supervised" and beta is not None:
        raise InvalidRequestError(f"--beta is for preference pairs (DPO); {data} holds supervised examples", param="beta")
    if kind == "dpo" and method == "full":
        raise InvalidRequestError("--method full cannot train on preference pairs: DPO trains a LoRA adapter (its "
                                  "reference model is the base with the adapter switched off)", param="method")
    hp = Hyperparameters(n_epochs=n_epochs, batch_size=_auto_or(batch_size, int, "--batch-size"),
                         learning_rate_multiplier=_auto_or(lr_multiplier, float, "--learning-rate-multiplier"),
                         tuning=method, lora_rank=lora_rank)
    if kind == "dpo":
        hp = DPOHyperparameters(**hp.model_dump(), beta=_beta(beta or "auto"))
    files = FileStore(jobs.conn, settings.files_dir, settings.max_upload_bytes)
    ids = []
    for path, report in zip(filter(None, (data, validation)), reports):
        if not report.ok or report.warnings:
            print_report(report, manifest.name, manifest.context_length, auto=n_epochs == "auto")
        require_method(report, kind, "--validation" if path == validation else "--data", str(path))
        if not report.examples:
            raise InvalidRequestError(f"{path} has no valid examples; see `tailor data check {path}`")
        if report.stats.dropped:
            _err.print(f"[yellow]{len(report.stats.dropped)} invalid lines of {path} are dropped (listed above)")
        ids.append(files.add_path(path).id)
    return jobs.create(manifest.name, ids[0], ids[1] if validation else None, hp, suffix, seed, method=kind)


def _beta(value: str) -> float | str:
    beta = _auto_or(value, float, "--beta")
    if beta != "auto" and beta > 2:
        raise InvalidRequestError("--beta must be at most 2", param="beta")
    return beta


def _prepare_resume(jobs, job_id: str):
    job = jobs.get(job_id)
    if job.status == "succeeded":
        raise InvalidRequestError(f"job {job_id} has already succeeded: {job.fine_tuned_model}")
    if job.leased:  # a live trainer holds it (a server's worker, another `tailor tune`): never a second one
        raise InvalidRequestError(f"job {job_id} is being trained by {job.lease_owner}")
    jobs.event(job_id, "Resumed from the command line")
    return jobs.update(job_id, status="queued" if jobs.files_validated(job_id) else "validating_files",
                       cancel_requested=False, pause_requested=False, error=None, finished_at=None, worker_pid=None)


def _run(settings, job_id: str) -> None:
    from tailorlm.tune.worker import run_job

    stop = threading.Event()

    def first_interrupt(*_: object) -> None:
        _err.print("[yellow]stopping after this step (Ctrl-C again to abort without a checkpoint)…")
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, first_interrupt)
    try:
        job = run_job(job_id, settings, show_progress=sys.stderr.isatty(), stop=stop, on_stop="cancel")
    finally:
        signal.signal(signal.SIGINT, previous)
    if job.status == "succeeded":
        _err.print(f"[green]done[/green]: {job.trained_tokens:,} tokens trained")
        _err.print(f"chat with it: tailor chat {job.fine_tuned_model}")
        print(job.fine_tuned_model)
        return
    if job.status in ("cancelled", "paused"):
        _err.print(f"{'paused' if job.status == 'paused' else 'stopped'}; the last checkpoint is kept. "
                   f"Resume with: tailor tune --resume {job.id}")
        raise typer.Exit(130)
    message = (job.error or {}).get("message", f"job ended {job.status}")
    _err.print(f"error: {message}")
    raise typer.Exit(1)
