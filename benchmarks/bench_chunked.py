"""Chunked prefill: how long a long prompt stalls the requests already decoding, with and without chunking.

    python benchmarks/bench_chunked.py [--threads 2] [--prompt-tokens 2000] [--running 4] [--chunk 256]

In one run, the same engine twice: with `prefill_chunk` = --chunk (the prompt is prefilled a chunk per step while
the others keep decoding) and with a budget larger than the prompt (the whole prompt in one step, as before
chunked prefill). Each time, --running requests decode; once they are streaming, one request with a
--prompt-tokens prompt arrives. Reported: the longest gap between two tokens of the running requests while the
long prompt is prefilled (the stall), their median gap, and the long request's time to first token.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import QUESTIONS, engine_args, machine, quiet_torch  # noqa: E402


def run(chunk: int, args) -> dict[str, float]:
    from tailorlm.config import get_settings
    from tailorlm.engine import SamplingParams
    from tailorlm.runtime import chat_prompt, open_model

    settings = get_settings().model_copy(update={"threads": args.threads, "prefill_chunk": chunk,
                                                 "prefix_cache_mb": 0, "max_batch": args.running + 1})
    model = open_model(args.model, settings=settings, show_progress=False)
    short = chat_prompt(model, [{"role": "user", "content": QUESTIONS[0]}])
    filler = model.tokenizer.encode(" ".join(QUESTIONS) * 40, add_special_tokens=False)
    long_prompt = (filler * (args.prompt_tokens // len(filler) + 1))[: args.prompt_tokens]
    model.submit(short, SamplingParams(temperature=0, max_tokens=4)).tokens()  # warm-up
    params = SamplingParams(temperature=0, max_tokens=args.new_tokens, ignore_eos=True)
    stamps: list[list[float]] = [[] for _ in range(args.running)]

    def consume(i: int) -> None:
        for _ in model.submit(short, params):
            stamps[i].append(time.perf_counter())

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(args.running)]
    for t in threads:
        t.start()
    while min(len(s) for s in stamps) < 8:  # every running request is streaming
        time.sleep(0.01)
    arrived = time.perf_counter()
    first = None
    for _ in model.submit(long_prompt, SamplingParams(temperature=0, max_tokens=1)):
        first = first or time.perf_counter()
    for t in threads:
        t.join()
    model.close()
    gaps_during = [b - a for s in stamps for a, b in zip(s, s[1:]) if arrived <= b <= first + 0.05]
    gaps = [b - a for s in stamps for a, b in zip(s, s[1:])]
    return {"stall_ms": 1e3 * max(gaps_during), "median_gap_ms": 1e3 * statistics.median(gaps),
            "ttft_ms": 1e3 * (first - arrived)}


def main() -> None:
    ap = engine_args(__doc__, new_tokens=256)
    ap.add_argument("--prompt-tokens", type=int, default=2000)
    ap.add_argument("--running", type=int, default=4)
    ap.add_argument("--chunk", type=int, default=256)
    args = ap.parse_args()
    quiet_torch(args.threads)
    info = machine()
    rows = {f"chunked ({args.chunk} tokens per step)": run(args.chunk, args),
            "whole prompt in one step": run(args.prompt_tokens + 512, args)}
    print(f"{info['date']} · {info['cpu']} · {args.threads} threads · commit {info['commit']} · "
          f"{args.running} requests decoding, then a {args.prompt_tokens}-token prompt arrives\n")
    print("| prefill | longest stall of running requests ms | their median token gap ms | long prompt TTFT ms |")
    print("|---|---|---|---|")
    for label, r in rows.items():
        print(f"| {label} | {r['stall_ms']:.0f} | {r['median_gap_ms']:.1f} | {r['ttft_ms']:.0f} |")


if __name__ == "__main__":
    main()
