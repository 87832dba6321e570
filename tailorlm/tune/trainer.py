"""The training loop: LoRA (PEFT) or full fine-tuning over packed batches, resumable and deterministic.

What a step optimizes is its `Objective` (objective.py: supervised cross-entropy; dpo.py: DPO on preference
pairs); the loop, the schedule, clipping and checkpoints are the same for both.

Determinism: the LoRA init is seeded, the batches of each epoch depend only on (seed, epoch)
(`packing.epoch_batches`), there is no dropout, and the learning rate is a pure function of the
step. A checkpoint saves weights, optimizer moments and RNG state, so a run resumed from step N
takes exactly the steps the uninterrupted run would have taken.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import PreTrainedModel

from tailorlm.hf_load import causal_lm
from tailorlm.store.architectures import architecture
from tailorlm.tune import attention, checkpoint
from tailorlm.tune.checkpoint import Progress
from tailorlm.tune.frozen import freeze_base_layers, resolve_compute_dtype
from tailorlm.tune.metrics import MetricsFile
from tailorlm.tune.objective import Objective, StepResult, Supervised, openai_names
from tailorlm.tune.packing import MAX_MICRO_TOKENS, epoch_batches

# Peak learning rates at multiplier 1: LoRA adapters start from zero and need a large step;
# full fine-tuning moves pretrained weights and needs a small one.
BASE_LEARNING_RATE = {"lora": 1e-3, "full": 2e-5}
WARMUP_FRACTION, MIN_LR_FRACTION, CLIP_NORM = 0.05, 0.1, 1.0


@dataclass
class TrainSpec:
    """A fully resolved training run (no "auto" left)."""

    base_path: Path
    method: Literal["lora", "full"]
    epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    lora_rank: int = 16
    lora_alpha: int | None = None  # default 2 * rank
    max_micro_tokens: int = MAX_MICRO_TOKENS
    checkpoint_every: int = 0  # steps; 0: four times per epoch
    dtype: torch.dtype = torch.float32  # the weights' dtype
    train_dtype: str = "auto"  # LoRA: the frozen base matmuls' dtype (auto, float32, bfloat16); see tune.frozen

    def steps_per_epoch(self, n_examples: int) -> int:
        return math.ceil(n_examples / self.batch_size)


@dataclass
class StepMetrics:
    step: int
    epoch: int
    train_loss: float
    scores: dict[str, float]  # the objective's other scores, named as in the metrics file
    learning_rate: float
    tokens: int
    trained_tokens: int
    tokens_per_second: float
    elapsed_seconds: float
    total_steps: int

    def row(self) -> dict[str, Any]:
        row = {k: v for k, v in self.__dict__.items() if k not in ("total_steps", "scores")}
        return {**row, **self.scores}


@dataclass
class TrainHooks:
    """What a run reports to whoever drives it (the job worker: events, progress bar, DB)."""

    on_step: Callable[[StepMetrics], None] = lambda m: None
    on_validation: Callable[[int, int, dict[str, float]], None] = lambda step, epoch, scores: None
    on_checkpoint: Callable[[int, Path, dict[str, float]], None] = lambda step, path, metrics: None
    should_stop: Callable[[], bool] = lambda: False


@dataclass
class TrainOutcome:
    finished: bool  # False: stopped early at a checkpoint
    progress: Progress
    final_train_loss: float | None = None
    final_valid_loss: float | None = None
    model: torch.nn.Module | None = field(default=None, repr=False)


def lr_at(step: int, total: int, peak: float) -> float:
    """Linear warmup over the first 5% of steps, then cosine decay to 10% of the peak."""
    warmup = max(1, round(total * WARMUP_FRACTION))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (MIN_LR_FRACTION + (1 - MIN_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress)))


def build_model(spec: TrainSpec) -> torch.nn.Module:
    """The base model in training form: with LoRA adapters (seeded init), or all weights trainable."""
    torch.manual_seed(spec.seed)
    model: PreTrainedModel = causal_lm(spec.base_path, dtype=spec.dtype)
    model.config.use_cache = False
    if model.config._attn_implementation == "sdpa":
        model.set_attn_implementation(attention.NAME)  # per-example causal attention over packed rows
    if spec.method == "full":
        model.train()
        return model
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=spec.lora_rank, lora_alpha=spec.lora_alpha or 2 * spec.lora_rank,
                        target_modules=list(architecture(model.config.model_type, "fine-tuning").lora_targets),
                        lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    if spec.dtype == torch.float32:
        freeze_base_layers(peft_model, resolve_compute_dtype(spec.train_dtype))
    peft_model.train()
    return peft_model


def make_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, foreach=True)


class Trainer:
    """Runs `spec` over `train` (and scores `valid` at each epoch's end), checkpointing in `workdir`.

    The examples are whatever `objective` takes: training `Sequence`s (supervised) or `PreferencePair`s (DPO).
    """

    def __init__(self, spec: TrainSpec, train: list[Any], valid: list[Any] | None,
                 workdir: Path, hooks: TrainHooks | None = None, objective: Objective | None = None) -> None:
        if not train:
            raise ValueError("no training examples")
        self.spec, self.train, self.valid = spec, train, valid or []
        self.objective: Objective = objective or Supervised()
        self.workdir = workdir
        self.hooks = hooks or TrainHooks()
        self.steps_per_epoch = spec.steps_per_epoch(len(train))
        self.total_steps = self.steps_per_epoch * spec.epochs
        self.checkpoint_every = spec.checkpoint_every or max(1, self.steps_per_epoch // 4)
        self.metrics = MetricsFile(workdir / "metrics.csv", self.objective.columns)

    @property
    def checkpoints_dir(self) -> Path:
        return self.workdir / "checkpoints"

    def run(self) -> TrainOutcome:
        spec = self.spec
        model = build_model(spec)
        optimizer = make_optimizer(model, spec.learning_rate)
        progress = Progress()
        last = checkpoint.latest(self.checkpoints_dir)
        if last is not None:
            progress = checkpoint.load(last, model, optimizer)
        self.metrics.truncate_after(progress.step)
        last_loss: float | None = None
        last_valid: float | None = progress.extra.get("valid_loss")
        resumed_elapsed, started = progress.elapsed, time.perf_counter()
        while progress.epoch < spec.epochs:
            batches = epoch_batches(len(self.train), spec.batch_size, spec.seed, progress.epoch)
            while progress.batch < len(batches):
                if self.hooks.should_stop():
                    progress.elapsed = resumed_elapsed + time.perf_counter() - started
                    path = checkpoint.save(self.checkpoints_dir, progress.step, model, optimizer, progress)
                    self.hooks.on_checkpoint(progress.step, path, {"step": progress.step})
                    return TrainOutcome(False, progress, last_loss, last_valid, model)
                t0 = time.perf_counter()
                lr = lr_at(progress.step, self.total_steps, spec.learning_rate)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                result = self._step(model, optimizer, [self.train[i] for i in batches[progress.batch]])
                dt = time.perf_counter() - t0
                progress.step += 1
                progress.batch += 1
                progress.tokens += result.tokens
                progress.trained_tokens += result.trained_tokens
                progress.elapsed = resumed_elapsed + time.perf_counter() - started
                last_loss = result.loss
                m = StepMetrics(progress.step, progress.epoch + 1, result.loss, result.scores, lr, progress.tokens,
                                progress.trained_tokens, result.tokens / dt if dt > 0 else 0.0, progress.elapsed,
                                self.total_steps)
                self.metrics.append(m.row())
                self.hooks.on_step(m)
                epoch_done = progress.batch == len(batches)
                valid: dict[str, float] = {}
                if epoch_done and self.valid:
                    valid = self.evaluate(model)
                    last_valid = progress.extra["valid_loss"] = valid["valid_loss"]
                    self.metrics.append({"step": progress.step, "epoch": progress.epoch + 1, **valid})
                    self.hooks.on_validation(progress.step, progress.epoch + 1, valid)
                if epoch_done:
                    progress.epoch += 1
                    progress.batch = 0
                if epoch_done or progress.step % self.checkpoint_every == 0:
                    path = checkpoint.save(self.checkpoints_dir, progress.step, model, optimizer, progress)
                    metrics = {"step": float(progress.step), "train_loss": result.loss,
                               **openai_names(self.objective, result.scores), **valid}
                    self.hooks.on_checkpoint(progress.step, path, metrics)
                if epoch_done:  # progress.batch is 0 again: the next epoch needs its own batches
                    break
        return TrainOutcome(True, progress, last_loss, last_valid, model)

    def _step(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, examples: list[Any]) -> StepResult:
        """One optimizer step over `examples`: the objective's gradient (accumulated over micro-batches), clipped."""
        result = self.objective.backward(model, examples, self.spec.max_micro_tokens)
        params = [p for p in model.parameters() if p.requires_grad]
        torch.nn.utils.clip_grad_norm_(params, CLIP_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return result

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """The objective's validation scores ({"valid_loss": …, …}) over the validation examples."""
        return self.objective.evaluate(model, self.valid, self.spec.max_micro_tokens)
