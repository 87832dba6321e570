"""Shared benchmark helpers: machine description, the default model, fixed prompts."""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import subprocess
import time
from collections.abc import Iterable

import torch
import transformers

QUESTIONS = [
    "Explain how a refrigerator keeps food cold.",
    "Write a short story about a lighthouse keeper.",
    "What are the main causes of the French Revolution?",
    "Describe the water cycle to a ten-year-old.",
    "Give me three tips for learning a new language.",
    "Why is the sky blue?",
    "Summarize the plot of Romeo and Juliet.",
    "How do vaccines train the immune system?",
    "What is the difference between weather and climate?",
    "Write a poem about autumn leaves.",
    "How does a bicycle stay upright?",
    "Explain what a database index is.",
    "What should I pack for a week of hiking?",
    "Describe how bread rises.",
    "What is photosynthesis?",
    "Give a recipe for a simple tomato soup.",
]


# Run as an AVX2-only machine would on an AVX-512 one: our C++ step's AVX2 kernels (and every choice made by ISA,
# tailorlm/engine/cpu.py), torch's AVX2 kernels and oneDNN capped at AVX2. Set before the process starts.
ISA_ENV = {"native": {}, "avx2": {"TAILOR_ISA": "avx2", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}


def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        rev = ""
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "flags": _vector_flags(),
        "threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "commit": rev,
    }


def _vector_flags() -> str:
    from tailorlm.engine.cpu import describe

    return describe()


def engine_args(doc: str, new_tokens: int) -> argparse.ArgumentParser:
    """The options every engine benchmark takes: threads, tokens per request, model, JSON output."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=new_tokens)
    ap.add_argument("--model", default=None, help="store name (default: the embedded default)")
    ap.add_argument("--json", default=None, help="also write the results here")
    return ap


def quiet_torch(threads: int) -> None:
    """Fix the thread count and silence transformers' warnings and progress bars."""
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(threads)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def start_run(model: str | None, threads: int):
    """What a benchmark over stored variants starts from: settings, store, base model name, machine, bandwidth GB/s."""
    quiet_torch(threads)
    from benchmarks.bandwidth import measure
    from tailorlm.config import get_settings
    from tailorlm.store import ModelStore

    settings = get_settings()
    store = ModelStore(settings.home)
    base = store.ensure(model or settings.default_model).name
    return settings, store, base, machine(), measure(threads)


def rate_after_first(stream: Iterable, limit: int | None = None) -> float:
    """Items per second of `stream` after its first item (decode speed without the prefill); stops after `limit`."""
    first, count = None, 0
    for _ in stream:
        count += 1
        first = first or time.perf_counter()
        if count == limit:
            break
    return (count - 1) / (time.perf_counter() - first)
