"""Run one fine-tuning job from its row in the store: validate, train (resuming), register, report.

The CLI (`tailor tune`) calls `run_job` in its own process with a progress bar; the server's
supervisor runs `python -m tailorlm.tune.worker JOB_ID` as a separate process. Either way the
job row, its events and checkpoints in SQLite, and its folder under HOME/jobs/<id> are the
whole state, so any process can pick up a job where another one stopped.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Literal

from tailorlm.config import Settings, get_settings
from tailorlm.db import connect
from tailorlm.errors import InvalidRequestError, TailorError
from tailorlm.files import FileStore
from tailorlm.tune import checkpoint as ckpt
from tailorlm.tune import lease
from tailorlm.tune.data import DataReport, check_file, require_method
from tailorlm.tune.data_stats import auto_epochs
from tailorlm.tune.dpo import DPO, encode_pair
from tailorlm.tune.jobs import DEFAULT_BETA, TERMINAL, VALIDATED, DPOHyperparameters, Hyperparameters, Job, JobStore
from tailorlm.tune.objective import Objective, Supervised, openai_names
from tailorlm.tune.packing import encode_example
from tailorlm.tune.progress import TrainProgress
from tailorlm.tune.trainer import BASE_LEARNING_RATE, StepMetrics, TrainHooks, Trainer, TrainOutcome, TrainSpec

log = logging.getLogger("tailorlm.tune")
OnStop = Literal["cancel", "requeue"]
MAX_DROPPED_EVENTS = 20  # dropped lines named one by one; beyond this, a count


def auto_batch_size(n_examples: int) -> int:
    """Examples per optimizer step when "auto": about 1/25 of the data, between 1 and 32."""
    return max(1, min(32, n_examples // 25))


def job_dir(settings: Settings, job_id: str) -> Path:
    return settings.jobs_dir / job_id


def run_job(job_id: str, settings: Settings | None = None, *, show_progress: bool = False,
            stop: threading.Event | None = None, on_stop: OnStop = "cancel") -> Job:
    """Take job `job_id` from wherever it is to a terminal status (or back to queued if stopped)."""
    settings = settings or get_settings()
    conn = connect(settings.db_path)
    jobs = JobStore(conn)
    files = FileStore(conn, settings.files_dir, settings.max_upload_bytes)
    stop = stop or threading.Event()
    job = jobs.get(job_id)
    if job.status in TERMINAL:
        raise InvalidRequestError(f"job {job_id} has already {job.status}", param="job")
    owner = lease.owner_id()
    if not lease.take(conn, job_id, owner):  # another trainer has it (or it was cancelled): never two
        job = jobs.get(job_id)
        if job.status not in TERMINAL and not job.cancel_requested:
            log.info("job %s is being trained by %s; not starting a second trainer", job_id, job.lease_owner)
        return job
    # a lost lease (renewals failed for its whole TTL: another trainer may take over) stops training at a step
    with lease.Heartbeat(conn, job_id, owner, on_lost=stop.set):
        return _run_leased(job, settings, jobs, files, show_progress, stop, on_stop)


def _run_leased(job: Job, settings: Settings, jobs: JobStore, files: FileStore, show_progress: bool,
                stop: threading.Event, on_stop: OnStop) -> Job:
    job_id = job.id
    try:
        return _run(job, settings, jobs, files, show_progress, stop, on_stop)
    except TailorError as exc:
        return _fail(jobs, job_id, exc.code, exc.message, exc.param)
    except KeyboardInterrupt:
        jobs.event(job_id, "Interrupted before training started", level="warn")
        return jobs.set_status(job_id, "cancelled" if on_stop == "cancel" else "queued", worker_pid=None)
    except Exception as exc:  # a bug or an environment failure: keep the trace in the log, report one line
        traceback.print_exc()
        return _fail(jobs, job_id, "internal_error", f"training failed: {type(exc).__name__}: {exc}", None)


def _fail(jobs: JobStore, job_id: str, code: str, message: str, param: str | None) -> Job:
    jobs.event(job_id, f"Job failed: {message}", level="error")
    return jobs.set_status(job_id, "failed", error={"code": code, "message": message, "param": param})


def _run(job: Job, settings: Settings, jobs: JobStore, files: FileStore, show_progress: bool,
         stop: threading.Event, on_stop: OnStop) -> Job:
    from tailorlm.chat import load_tokenizer
    from tailorlm.store import ModelStore

    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
    store = ModelStore(settings.home)
    manifest = store.get(job.model)
    base_path = store.path(manifest.name)
    if settings.verify_digests:
        store.verify(manifest.name)
    tokenizer = load_tokenizer(base_path, name=manifest.name)
    fresh = job.status == "validating_files"
    if fresh:
        jobs.event(job.id, "Validating training file: " + job.training_file)
    train = _load_file(jobs, files, job, job.training_file, "training_file", tokenizer, manifest.context_length, fresh)
    valid = None
    if job.validation_file:
        valid = _load_file(jobs, files, job, job.validation_file, "validation_file", tokenizer,
                           manifest.context_length, fresh)
    if fresh and jobs.validated(job.id):
        jobs.event(job.id, f"{VALIDATED}, moving job to queued state")
    if not jobs.claim(job.id, os.getpid()):
        current = jobs.get(job.id)
        if current.pause_requested and current.status in ("validating_files", "queued"):
            return jobs.paused(job.id, "Job paused before training started")
        if current.status != "running" or current.worker_pid not in (None, os.getpid()):
            return current  # cancelled or paused meanwhile, or taken by another worker
        jobs.update(job.id, worker_pid=os.getpid())

    resolved = _resolve(job.hyperparameters, len(train))
    job = jobs.update(job.id, hyperparameters=resolved)
    spec = TrainSpec(
        base_path=base_path, method=resolved.tuning, epochs=int(resolved.n_epochs),
        batch_size=int(resolved.batch_size), seed=job.seed, lora_rank=resolved.lora_rank,
        train_dtype=settings.train_dtype,
        learning_rate=BASE_LEARNING_RATE[resolved.tuning] * float(resolved.learning_rate_multiplier),
    )
    objective: Objective = DPO(float(resolved.beta)) if isinstance(resolved, DPOHyperparameters) else Supervised()
    workdir = job_dir(settings, job.id)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(json.dumps({
        "job": job.id, "model": job.model, "base_path": str(base_path), "seed": job.seed, "method": job.method,
        "hyperparameters": resolved.model_dump(), "learning_rate": spec.learning_rate,
        "train_examples": len(train), "valid_examples": len(valid or []),
    }, indent=1))
    trainer = Trainer(spec, train, valid, workdir, objective=objective)
    last = ckpt.latest(trainer.checkpoints_dir)
    first_step = int(last.name.removeprefix("step-")) if last else 0
    what = f"{resolved.tuning}, dpo (beta {resolved.beta})" if job.method == "dpo" else resolved.tuning
    jobs.event(job.id, (f"Resuming from step {first_step}:" if last else "Fine-tuning") + f" {job.model} with {what}: "
               f"{len(train)} {'pairs' if job.method == 'dpo' else 'examples'}, {spec.epochs} epochs, "
               f"batch size {spec.batch_size}, {trainer.total_steps} steps")
    known_checkpoints = {c.step_number for c in jobs.checkpoints(job.id)}
    started = time.time()

    with TrainProgress(trainer.total_steps, enabled=show_progress) as bar:
        def on_step(m: StepMetrics) -> None:
            bar.update(m)
            scores = f", {objective.describe(m.scores)}" if job.method == "dpo" else ""
            jobs.event(job.id, f"Step {m.step}/{m.total_steps}: training loss={m.train_loss:.4f}{scores}",
                       type="metrics", data={"step": m.step, "total_steps": m.total_steps, "train_loss": m.train_loss,
                                             **openai_names(objective, m.scores), "learning_rate": m.learning_rate})
            left = (m.total_steps - m.step) * (time.time() - started) / max(1, m.step - first_step)
            jobs.update(job.id, estimated_finish=int(time.time() + left), trained_tokens=m.tokens)

        def on_validation(step: int, epoch: int, scores: dict[str, float]) -> None:
            loss = scores["valid_loss"]
            bar.note(f"epoch {epoch}: validation loss {loss:.4f}")
            jobs.event(job.id, f"Epoch {epoch}: validation loss={loss:.4f}, {objective.describe(scores)}",
                       type="metrics", data={"step": step, "epoch": epoch, **scores})

        def on_checkpoint(step: int, path: Path, metrics: dict[str, float]) -> None:
            if step in known_checkpoints or step == 0:
                return
            known_checkpoints.add(step)
            jobs.add_checkpoint(job.id, step, metrics, f"{job.target_model}:ckpt-step-{step}")
            jobs.event(job.id, f"Checkpoint saved at step {step}")

        def should_stop() -> bool:
            return stop.is_set() or jobs.stop_requested(job.id)

        trainer.hooks = TrainHooks(on_step, on_validation, on_checkpoint, should_stop)
        bar.start_at(first_step)
        outcome = trainer.run()

    if not outcome.finished:
        return _stopped(jobs, job, outcome, on_stop)
    jobs.update(job.id, trained_tokens=outcome.progress.tokens)
    name = _register(settings, job, spec, outcome, workdir)
    result = files.add_path(workdir / "metrics.csv", purpose="fine-tune-results")
    jobs.event(job.id, f"New fine-tuned model created: {name}")
    jobs.event(job.id, "The job has successfully completed")
    return jobs.set_status(job.id, "succeeded", fine_tuned_model=name, result_files=[result.id],
                           estimated_finish=None)


def _resolve(hp: Hyperparameters, n_examples: int) -> Hyperparameters:
    """The hyperparameters with every "auto" decided for `n_examples` (as OpenAI reports them once training starts)."""
    values = hp.model_dump()
    values.update(
        n_epochs=hp.n_epochs if hp.n_epochs != "auto" else auto_epochs(n_examples),
        batch_size=hp.batch_size if hp.batch_size != "auto" else auto_batch_size(n_examples),
        learning_rate_multiplier=hp.learning_rate_multiplier if hp.learning_rate_multiplier != "auto" else 1.0)
    if isinstance(hp, DPOHyperparameters):
        values["beta"] = hp.beta if hp.beta != "auto" else DEFAULT_BETA
    return type(hp).model_validate(values)


def _stopped(jobs: JobStore, job: Job, outcome: TrainOutcome, on_stop: OnStop) -> Job:
    step = outcome.progress.step
    current = jobs.get(job.id)
    if current.pause_requested and not current.cancel_requested:
        return jobs.paused(job.id, f"Job paused at step {step}; its checkpoint is kept and it continues from there "
                                   "when resumed")
    if current.cancel_requested or on_stop == "cancel":
        jobs.event(job.id, f"Job cancelled at step {step}; its checkpoint is kept "
                   f"(`tailor tune --resume {job.id}` continues it)")
        return jobs.set_status(job.id, "cancelled", estimated_finish=None)
    jobs.event(job.id, f"Job stopped at step {step} (its worker was stopped); it is queued again and resumes from "
               "this checkpoint")
    return jobs.set_status(job.id, "queued", worker_pid=None)


def _load_file(jobs: JobStore, files: FileStore, job: Job, file_id: str, param: str, tokenizer,
               context_length: int | None, report_events: bool) -> list:
    """Check an uploaded file as `tailor data check` does; its valid examples as training sequences (a dpo job's:
    as preference pairs, all of which must be valid)."""
    path = files.path(file_id)
    report: DataReport = check_file(path, tokenizer, context_length)
    require_method(report, job.method, param, file_id)
    if report_events:
        for n, (line, reason) in enumerate(report.stats.dropped):
            if n == MAX_DROPPED_EVENTS:
                jobs.event(job.id, f"... and {len(report.stats.dropped) - n} more dropped lines", level="warn")
                break
            jobs.event(job.id, f"{param} line {line} dropped: {reason}", level="warn")
    if not report.examples:
        first = report.errors[0] if report.errors else None
        where = f" (line {first.line}: {first.message})" if first and first.line else (
            f" ({first.message})" if first else "")
        raise InvalidRequestError(f"{param} {file_id} has no valid examples{where}", param=param)
    encode = encode_pair if job.method == "dpo" else encode_example
    return [encode(tokenizer, e.data) for e in report.examples]


def _register(settings: Settings, job: Job, spec: TrainSpec, outcome: TrainOutcome, workdir: Path) -> str:
    """Save the result under the job folder and register it in the store as `ft:<base>:<suffix>:<id>`."""
    from tailorlm.store import AdapterStore, ModelStore

    result = workdir / "result"
    shutil.rmtree(result, ignore_errors=True)
    model = outcome.model
    assert model is not None
    name = job.target_model
    extra = {"job": job.id, "train_loss": outcome.final_train_loss, "valid_loss": outcome.final_valid_loss,
             "seed": job.seed, "method": job.method}
    if isinstance(job.hyperparameters, DPOHyperparameters):
        extra["beta"] = job.hyperparameters.beta  # what `tailor eval` scores the adapter's implicit rewards with
    if spec.method == "lora":
        model.peft_config["default"].base_model_name_or_path = job.model
        model.save_pretrained(result)
        AdapterStore(settings.home).add(name, job.model, result, extra=extra, overwrite=True)
    else:
        model.save_pretrained(result, safe_serialization=True)
        for f in spec.base_path.iterdir():  # tokenizer, chat template, generation config
            if f.is_file() and not f.name.endswith(".safetensors") and not (result / f.name).exists() \
                    and not f.name.startswith(("manifest", "model.safetensors")):
                shutil.copy2(f, result / f.name)
        ModelStore(settings.home).import_path(result, name=name, show_progress=False, overwrite=True)
    return name


def main(argv: list[str] | None = None) -> int:
    """`python -m tailorlm.tune.worker JOB_ID`: run a job; SIGTERM/SIGINT checkpoint it and requeue it."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m tailorlm.tune.worker JOB_ID", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        job = run_job(args[0], get_settings(), stop=stop, on_stop="requeue")
    except TailorError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    print(f"{job.id}: {job.status}", file=sys.stderr)
    return 0 if job.status in ("succeeded", "queued", "paused", "cancelled") else 1


if __name__ == "__main__":
    raise SystemExit(main())
