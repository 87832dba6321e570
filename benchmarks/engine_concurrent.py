"""The engine alone at C concurrent requests, the same prompts as bench_server: what the server's tok/s compares to.

    python benchmarks/engine_concurrent.py [--dtype int8] [--concurrency 16] [--max-tokens 128] [--rounds 2]

Submits C chat prompts (benchmarks/common.py QUESTIONS) at once to one `Engine` (no HTTP, no consumer threads: the
sinks only count), `ignore_eos` so each yields exactly max-tokens, and prints per round the wall time, aggregate
tok/s and ms per engine step (prefill included). Set TAILOR_ISA=avx2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
in the environment to run as an AVX2 machine would.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import QUESTIONS, machine, quiet_torch  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="int8")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    quiet_torch(args.threads)
    from tailorlm.chat import render_chat
    from tailorlm.chat.tokenizer import load_tokenizer
    from tailorlm.config import DEFAULT_MODEL, get_settings
    from tailorlm.engine import Engine, SamplingParams, load_model
    from tailorlm.store import ModelStore

    path = ModelStore(get_settings().home).path(DEFAULT_MODEL)
    tok = load_tokenizer(path)
    engine = Engine(load_model(path, dtype=args.dtype), max_batch=args.concurrency)
    prompts = [render_chat(tok, [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}])
               for i in range(args.concurrency)]
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)
    info = machine()
    print(f"# {DEFAULT_MODEL} · {args.dtype} · {info['flags']} · isa {get_settings().isa} · {info['date']}")
    for r in range(args.rounds):
        done = threading.Semaphore(0)

        def sink(event) -> None:
            if event.finish_reason is not None:
                done.release()

        start, steps = time.perf_counter(), engine.core.steps
        for prompt in prompts:
            engine.submit(prompt, params, sink=sink)
        for _ in prompts:
            done.acquire()
        wall, n = time.perf_counter() - start, engine.core.steps - steps
        print(f"round {r + 1}: {args.concurrency} x {args.max_tokens} tokens in {wall:.2f} s, "
              f"{args.concurrency * args.max_tokens / wall:.0f} tok/s, {n} steps, {wall / n * 1e3:.1f} ms/step")
    engine.shutdown()


if __name__ == "__main__":
    main()
