"""Single-stream decode: the engine's int8 path against llama.cpp's `llama-bench` on q8_0, interleaved in one run.

    python benchmarks/bench_single.py [--isa native|avx2] [--threads 2] [--new-tokens 128] [--rounds 3]

Each round runs, one after the other, `llama-bench -m <q8_0 gguf> -t T -n N -p 0` (the llama.cpp build for --isa:
`python benchmarks/llamacpp.py build --isa avx2`) and, in a fresh process with the ISA's environment
(benchmarks/common.py ISA_ENV), the engine (`dtype int8`, the C++ step) decoding N tokens greedily after one of the
fixed chat prompts, timed after the first token (streamed to the caller, scheduler and sampling included).
Interleaving puts both sides under the same background load; the medians and their ratio are printed with the
machine's CPU flags. The q8_0 GGUF is exported from the same stored weights on first use.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import ISA_ENV, QUESTIONS, machine, quiet_torch, rate_after_first  # noqa: E402


def ours(threads: int, new_tokens: int) -> float:
    """In this (child) process: the engine's single-stream tokens/s after the first token, best warmed."""
    quiet_torch(threads)
    from tailorlm.config import get_settings
    from tailorlm.engine import SamplingParams
    from tailorlm.runtime import chat_prompt, open_model

    settings = get_settings().model_copy(update={"dtype": "int8", "kernels": "native", "threads": threads,
                                                 "max_batch": 1, "prefix_cache_mb": 0})
    model = open_model(settings=settings, show_progress=False)
    prompt = chat_prompt(model, [{"role": "user", "content": QUESTIONS[0]}])
    params = SamplingParams(temperature=0, max_tokens=new_tokens + 1, ignore_eos=True)
    model.submit(prompt, params).tokens()  # warm-up
    rate = rate_after_first(model.submit(prompt, params))
    model.close()
    return rate


def peer(bench: Path, gguf: Path, threads: int, new_tokens: int) -> float:
    out = subprocess.run([str(bench), "-m", str(gguf), "-t", str(threads), "-n", str(new_tokens), "-p", "0",
                          "-r", "1", "-o", "json"], capture_output=True, text=True, check=True).stdout
    return float(json.loads(out)[0]["avg_ts"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--isa", choices=sorted(ISA_ENV), default="native")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps({"tok_s": ours(args.threads, args.new_tokens)}))
        return
    from benchmarks.llamacpp import build_dir, convert

    bench = build_dir(args.isa) / "bin" / "llama-bench"
    if not bench.is_file():
        sys.exit(f"{bench} not found: build it with `python benchmarks/llamacpp.py build --isa {args.isa}`")
    gguf = convert(outtype="q8_0")
    env = {**os.environ, **ISA_ENV[args.isa]}
    child = [sys.executable, __file__, "--child", "--threads", str(args.threads), "--new-tokens", str(args.new_tokens)]
    mine, theirs = [], []
    for r in range(args.rounds):
        theirs.append(peer(bench, gguf, args.threads, args.new_tokens))
        mine.append(json.loads(subprocess.run(child, env=env, capture_output=True, text=True,
                                              check=True).stdout.strip().splitlines()[-1])["tok_s"])
        print(f"round {r + 1}: tailorlm int8 {mine[-1]:.1f} tok/s, llama-bench q8_0 {theirs[-1]:.1f} tok/s", flush=True)
    info = machine()
    a, b = statistics.median(mine), statistics.median(theirs)
    print(f"{info['date']} · {info['cpu']} · {info['flags']} · isa {args.isa} · commit {info['commit']}")
    print(f"| single stream, {args.new_tokens} tokens, {args.threads} threads | tailorlm int8 | llama-bench q8_0 | ratio |")
    print(f"| median of {args.rounds} | {a:.1f} | {b:.1f} | **{a / b:.2f}x** |")


if __name__ == "__main__":
    main()
