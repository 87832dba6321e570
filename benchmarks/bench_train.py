"""LoRA training speed and memory on the default model, side by side with transformers `Trainer` + PEFT.

    python benchmarks/bench_train.py [--threads 2] [--steps 15] [--warmup 2] [--batch-size 8] [--precision float32]

Both sides train the default model (fp32) on the demo data (`tailorlm/tune/demo/train.jsonl`) with the same
LoRA (r=16, alpha=32, every linear layer, dropout 0), the same batches of examples in the same order, the
same constant learning rate, gradient clipping and AdamW, and the same loss tokens (our `encode_example`
masks: assistant tokens only). Ours packs each step's examples into one row and projects to the vocabulary
only where a token is trained; the peer pads each batch to its longest example (DataCollatorForSeq2Seq,
labels -100 off the assistant tokens) and computes the full-vocabulary logits. Each side runs in its own
process (peak RSS is its own), with `--warmup` untimed steps before `--steps` timed optimizer steps.
tokens/s counts real tokens (no padding) over the timed steps; the first step's loss, the same for both
when they train the same tokens (LoRA starts as the identity), is printed as a check.

`--precision` is like for like: float32 runs both sides in fp32; bfloat16 runs our frozen base matmuls in
bf16 (`train_dtype`, tailorlm/tune/frozen.py; the default on CPUs with native bf16) and the peer with
`TrainingArguments(bf16=True)` (autocast).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import ISA_ENV, machine, quiet_torch  # noqa: E402

DEMO = Path(__file__).resolve().parent.parent / "tailorlm" / "tune" / "demo" / "train.jsonl"
SIDES = {"tailorlm": "tailorlm (packed, trained-token logits)",
         "transformers": "transformers Trainer + PEFT (padded)"}
LR, SEED, RANK, ALPHA = 1e-3, 0, 16, 32


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def step_batches(tokenizer, batch_size: int, n_steps: int) -> list[list]:
    """The examples of each optimizer step, as our training Sequences: the demo file in order, cycled."""
    from tailorlm.tune.packing import encode_example

    rows = [json.loads(line) for line in DEMO.read_text().splitlines() if line.strip()]
    seqs = [encode_example(tokenizer, r) for r in rows]
    return [[seqs[(s * batch_size + i) % len(seqs)] for i in range(batch_size)] for s in range(n_steps)]


def timed_sums(batches: list[list], warmup: int) -> dict[str, int]:
    timed = [seq for batch in batches[warmup:] for seq in batch]
    padded = sum(len(batch) * max(len(s) for s in batch) for batch in batches[warmup:])
    return {"tokens": sum(len(s) for s in timed), "trained_tokens": sum(s.trained_tokens for s in timed),
            "padded_tokens": padded}


def run_ours(path: Path, batches: list[list], warmup: int, precision: str) -> tuple[float, list[float], float]:
    """(seconds over the timed steps, loss of each step, peak RSS once the model is built)."""
    from tailorlm.tune.trainer import Trainer, TrainSpec, build_model, make_optimizer

    spec = TrainSpec(base_path=path, method="lora", epochs=1, batch_size=len(batches[0]), learning_rate=LR,
                     seed=SEED, lora_rank=RANK, lora_alpha=ALPHA, train_dtype=precision)
    model = build_model(spec)
    optimizer = make_optimizer(model, LR)
    loaded_rss = peak_rss_mib()
    losses: list[float] = []
    with tempfile.TemporaryDirectory() as workdir:
        trainer = Trainer(spec, [s for b in batches for s in b], None, Path(workdir))
        for i, batch in enumerate(batches):
            if i == warmup:
                t0 = time.perf_counter()
            losses.append(trainer._step(model, optimizer, batch).loss)  # one optimizer step, as Trainer.run takes it
        return time.perf_counter() - t0, losses, loaded_rss


def run_transformers(path: Path, batches: list[list], warmup: int, threads: int,
                     precision: str) -> tuple[float, list[float], float]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer,
                              TrainerCallback, TrainingArguments)

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    model.config.use_cache = False
    torch.manual_seed(SEED)
    model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules="all-linear", lora_dropout=0.0,
                                             bias="none", task_type="CAUSAL_LM"))
    loaded_rss = peak_rss_mib()
    dataset = [{"input_ids": list(s.ids), "attention_mask": [1] * len(s),
                "labels": [t if m else -100 for t, m in zip(s.ids, s.trained)]} for b in batches for s in b]
    times: dict[int, float] = {}
    losses: list[float] = []

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            times[state.global_step] = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=len(batches[0]), max_steps=len(batches),
            learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
            optim="adamw_torch", adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, seed=SEED,
            train_sampling_strategy="sequential", dataloader_num_workers=0, remove_unused_columns=False,
            logging_strategy="steps", logging_steps=1, save_strategy="no", report_to=[], disable_tqdm=True,
            use_cpu=True, label_names=["labels"], bf16=precision == "bfloat16",
        )
        tokenizer = AutoTokenizer.from_pretrained(path)
        collator = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100)
        torch.set_num_threads(threads)  # Trainer setup may touch it; the same threads as ours
        Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator, callbacks=[Timer()]).train()
    return times[len(batches)] - times[warmup], losses, loaded_rss


def child(args: argparse.Namespace) -> None:
    """One side, in this process: print its measurements as one JSON line."""
    quiet_torch(args.threads)
    from tailorlm.chat import load_tokenizer
    from tailorlm.store import ModelStore

    path = ModelStore().path(args.model)
    batches = step_batches(load_tokenizer(path), args.batch_size, args.warmup + args.steps)
    if args.side == "tailorlm":
        seconds, losses, loaded = run_ours(path, batches, args.warmup, args.precision)
    else:
        seconds, losses, loaded = run_transformers(path, batches, args.warmup, args.threads, args.precision)
    sums = timed_sums(batches, args.warmup)
    print(json.dumps({
        "side": args.side, "seconds": seconds, **sums, "steps": args.steps,
        "tokens_per_second": sums["tokens"] / seconds, "trained_tokens_per_second": sums["trained_tokens"] / seconds,
        "first_loss": losses[0], "last_loss": losses[-1], "rss_after_load_mib": loaded,
        "peak_rss_mib": peak_rss_mib(),
    }))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=15, help="timed optimizer steps")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--batch-size", type=int, default=8, help="examples per optimizer step")
    ap.add_argument("--model", default=None, help="store name (default: the embedded default)")
    ap.add_argument("--precision", choices=["float32", "bfloat16"], default="float32",
                    help="both sides' matmul precision (like for like)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--isa", choices=tuple(ISA_ENV), default="native",
                    help="avx2: both sides as on an AVX2-only CPU (torch and oneDNN capped at AVX2, no bf16)")
    ap.add_argument("--side", choices=list(SIDES), help=argparse.SUPPRESS)  # internal: run one side
    args = ap.parse_args()
    if args.steps < 1 or args.warmup < 1 or args.batch_size < 1:
        ap.error("--steps, --warmup and --batch-size must be at least 1")
    from tailorlm.config import get_settings
    from tailorlm.store import ModelStore

    args.model = ModelStore().ensure(args.model or get_settings().default_model).name
    if args.side:
        child(args)
        return

    info = machine()
    info["threads"] = str(args.threads)
    info["isa"] = args.isa
    print(f"# {args.model} · {info['cpu']} · {info['flags']} · isa {args.isa} · {args.threads} threads · {info['date']}")
    print(f"# LoRA r={RANK} alpha={ALPHA} all-linear, {args.precision}, batch {args.batch_size} examples, "
          f"{args.warmup} warm-up + {args.steps} timed steps, demo data")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false", **ISA_ENV[args.isa]}
    results, commands = {}, {}
    for side in SIDES:
        cmd = [sys.executable, __file__, "--side", side, "--model", args.model, "--threads", str(args.threads),
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch-size", str(args.batch_size),
               "--precision", args.precision]
        commands[side] = " ".join(cmd)
        print(f"$ {commands[side]}", flush=True)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{side} failed:\n{done.stderr[-4000:]}")
        results[side] = json.loads(done.stdout.strip().splitlines()[-1])

    ours, peer = results["tailorlm"], results["transformers"]
    rows = [("training tok/s (real tokens)", "tokens_per_second", "{:.0f}"),
            ("trained (assistant) tok/s", "trained_tokens_per_second", "{:.0f}"),
            ("seconds, timed steps", "seconds", "{:.1f}"),
            ("peak RSS MiB", "peak_rss_mib", "{:.0f}"),
            ("RSS after model load MiB", "rss_after_load_mib", "{:.0f}")]
    print(f"\n| measure | {SIDES['tailorlm']} | {SIDES['transformers']} | ratio |\n|---|---|---|---|")
    for label, key, fmt in rows:
        print(f"| {label} | {fmt.format(ours[key])} | {fmt.format(peer[key])} | {ours[key] / peer[key]:.2f}× |")
    print(f"| first-step loss (same tokens: should match) | {ours['first_loss']:.4f} | {peer['first_loss']:.4f} | |")
    print(f"\ntimed: {ours['tokens']:,} real tokens ({ours['trained_tokens']:,} trained); the peer computes "
          f"{peer['padded_tokens']:,} with padding ({1 - peer['tokens'] / peer['padded_tokens']:.0%} padding)")
    print(f"training tok/s vs transformers Trainer + PEFT: {ours['tokens_per_second'] / peer['tokens_per_second']:.2f}×")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "commands": commands, **results}, indent=2))


if __name__ == "__main__":
    main()
