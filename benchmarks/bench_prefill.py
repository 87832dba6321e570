"""Prompt prefill through the C++ step against torch's GEMM path, per weight format, in one run.

    python benchmarks/bench_prefill.py [--threads 2] [--tokens 200] [--dtypes float32,bfloat16,int8]

Both runners hold the same stored weights (the embedded default unless --model); each prefills one prompt of
--tokens tokens into an empty slot, best of 3 after a warm-up. "native" is the C++ step with rows of one slot
at successive positions (runner.native, called directly, so float32 is measured too although the engine keeps
float32 prompts on torch); "torch" is the transformers forward over the slot cache (torch's GEMM; for int8
the dequantize-then-GEMM of every layer). Also prints the largest logit difference between the two.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import machine, quiet_torch  # noqa: E402
from tailorlm.config import get_settings  # noqa: E402
from tailorlm.engine.loader import load_model  # noqa: E402
from tailorlm.engine.runner import ModelRunner  # noqa: E402
from tailorlm.store import ModelStore  # noqa: E402


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--dtypes", default="float32,bfloat16,int8")
    ap.add_argument("--model", default=None)
    args = ap.parse_args()
    quiet_torch(args.threads)
    store = ModelStore(get_settings().home)
    name = args.model or get_settings().default_model
    path = store.path(store.ensure(name, show_progress=False).name)
    print(" · ".join(f"{k}: {v}" for k, v in machine().items()))
    prompt = [100 + (7 * i) % 20000 for i in range(args.tokens)]
    print(f"{name}, one prompt of {args.tokens} tokens, {args.threads} threads, best of 3\n")
    print("| weights | C++ step tok/s | torch tok/s | ratio | max logit diff |\n|---|---|---|---|---|")
    for dtype in args.dtypes.split(","):
        runners = {}
        for kernels in ("native", "torch"):
            loaded = load_model(path, dtype=dtype, kernels=kernels)
            runners[kernels] = ModelRunner(loaded.model, max_slots=1, context_length=args.tokens + 64,
                                           int8=loaded.int8, kernels=kernels)
        step, cache = runners["native"].native, runners["native"].cache
        cache.reserve(1, args.tokens)
        ids, pos, slots = torch.tensor(prompt), torch.arange(args.tokens), torch.zeros(args.tokens, dtype=torch.long)
        last = torch.tensor([args.tokens - 1])
        native = lambda: step(ids, pos, cache.keys, cache.values, slots=slots, logit_rows=last)  # noqa: E731
        theirs = lambda: runners["torch"].prefill(0, prompt, 0)  # noqa: E731
        native(), theirs()  # warm-up
        t_native, t_torch = best_of(native), best_of(theirs)
        diff = (native()[-1] - theirs()[-1].float()).abs().max().item()
        print(f"| {dtype} | {args.tokens / t_native:,.0f} | {args.tokens / t_torch:,.0f} | "
              f"{t_torch / t_native:.2f}x | {diff:.3g} |")


if __name__ == "__main__":
    main()
