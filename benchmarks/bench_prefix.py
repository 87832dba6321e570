"""Time to first token with a cached prompt prefix vs without, on the default model.

    python benchmarks/bench_prefix.py [--threads 2] [--prefix-tokens 1000] [--requests 5]

Every request starts with the same ~1,000-token system prompt (a preset's instructions and sources look like
this) and ends with its own question. The engine with the prefix cache computes the shared part once; the same
engine with the cache off computes it every time. Same weights, threads and prompts; TTFT median of `--requests`.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import QUESTIONS, engine_args, machine, quiet_torch  # noqa: E402


def ttft(eng, prompt: list[int]) -> float:
    from tailorlm.engine import SamplingParams

    t0 = time.perf_counter()
    next(iter(eng.submit(prompt, SamplingParams(temperature=0, max_tokens=1))))
    return time.perf_counter() - t0


def main() -> None:
    ap = engine_args(__doc__, 1)
    ap.add_argument("--prefix-tokens", type=int, default=1000)
    ap.add_argument("--requests", type=int, default=5)
    args = ap.parse_args()
    quiet_torch(args.threads)
    from tailorlm.config import get_settings
    from tailorlm.runtime import open_model
    from tailorlm.chat import render_chat

    settings = get_settings().model_copy(update={"threads": args.threads, "prefix_cache_mb": 0})
    model = open_model(args.model, settings=settings, show_progress=False)
    tok = model.tokenizer
    filler = " ".join(QUESTIONS) + " "
    system = "You are the assistant of a seed library. Reference material follows. "
    while len(tok.encode(system, add_special_tokens=False)) < args.prefix_tokens:
        system += filler
    prompts = [render_chat(tok, [{"role": "system", "content": system}, {"role": "user", "content": q}])
               for q in QUESTIONS[: args.requests + 1]]
    shared = min(len(p) for p in prompts)
    shared = next(i for i in range(shared) if len({p[i] for p in prompts}) > 1)
    plain = model.engine
    with_cache = open_model(args.model, settings=settings.model_copy(update={"prefix_cache_mb": 256}),
                            show_progress=False)
    cached = with_cache.engine
    for eng in (plain, cached):
        ttft(eng, prompts[0])  # warm-up; for `cached`, it also stores the shared prefix
    cold = statistics.median(ttft(plain, p) for p in prompts[1:])
    warm = statistics.median(ttft(cached, p) for p in prompts[1:])
    info = machine()
    print(f"\n{info['date']} · {info['cpu']} · {args.threads} threads · torch {info['torch']} · commit {info['commit']}")
    print(f"prompts of {min(map(len, prompts))}–{max(map(len, prompts))} tokens sharing their first {shared}\n")
    print("| | TTFT median ms |\n|---|---|")
    print(f"| prefix computed every time (cache off) | {cold * 1000:.1f} |")
    print(f"| prefix cached | {warm * 1000:.1f} |")
    print(f"| speed-up | **{cold / warm:.1f}×** |")
    with_cache.close()
    model.close()


if __name__ == "__main__":
    main()
