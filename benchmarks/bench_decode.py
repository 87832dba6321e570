"""Native decode speed by weight format, side by side with llama-cpp-python on the same weights, in one run.

    python benchmarks/bench_decode.py [--threads 2] [--new-tokens 128] [--concurrency 16] [--json out.json]

In one run, on the default model (or --model): this machine's streaming-read bandwidth (benchmarks/bandwidth.py);
then, each in a fresh process, the engine with its native (C++) decode step in fp32, bf16 and int8, with the torch
decode step in fp32, bf16 and compiled int8 (for comparison), and
llama-cpp-python (`Llama.generate`, greedy) on the q8_0 and f16 GGUF exports of the same stored weights (exported
on first use), all on --threads threads:
- single-stream decode tokens/s (median of 3; the prompt is one of the fixed questions, 128 tokens after the first),
  and the achieved bandwidth: weight bytes read per token (every matrix in the layout the engine holds it in) ×
  tokens/s, as a percentage of the measured streaming-read rate;
- for the native engine, aggregate output tokens/s with --concurrency requests submitted together.
Our figures go through the whole engine (scheduler, sampling, streaming to the caller); the peer's are its
Python binding's own loop, with no scheduler.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import QUESTIONS, engine_args, quiet_torch, rate_after_first, start_run  # noqa: E402

NATIVE = {  # label: (dtype, compile, kernels)
    "native fp32": ("float32", False, "native"), "native bf16": ("bfloat16", False, "native"),
    "native int8": ("int8", False, "native"), "torch fp32": ("float32", False, "torch"),
    "torch bf16": ("bfloat16", False, "torch"), "torch int8, compiled": ("int8", True, "torch")}
PEERS = {"llama-cpp-python q8_0": "q8_0", "llama-cpp-python f16": "f16"}
REPEATS = 3


def layout_bytes(model) -> int:
    """Bytes of every matrix a decode step reads, as the engine holds them (packed, int8 + scales...)."""
    from torch import nn

    from tailorlm.engine.layout import Int8Linear, OneDNNLinear, TransposedLinear

    total = 0
    for m in model.modules():
        if type(m) is nn.Linear:  # the native step's plain layout
            total += m.weight.nbytes
        elif isinstance(m, Int8Linear):
            total += m.qweight.nbytes + m.scale.nbytes
        elif isinstance(m, OneDNNLinear):
            total += m.packed.nbytes
        elif isinstance(m, TransposedLinear):
            total += m.weight_t.nbytes
    return total


def native(name: str, dtype: str, compile: bool, kernels: str, threads: int, new_tokens: int,
           concurrency: int) -> dict:
    """In its own process: open, warm up (and compile), then time single-stream and concurrent decoding."""
    quiet_torch(threads)
    from tailorlm.config import get_settings
    from tailorlm.engine import SamplingParams
    from tailorlm.runtime import chat_prompt, open_model

    settings = get_settings().model_copy(update={"dtype": dtype, "compile": compile, "kernels": kernels,
                                                 "threads": threads,
                                                 "max_batch": concurrency, "prefix_cache_mb": 0})
    model = open_model(name, settings=settings, show_progress=False)
    prompts = [chat_prompt(model, [{"role": "user", "content": q}]) for q in QUESTIONS]
    params = SamplingParams(temperature=0, max_tokens=new_tokens + 1, ignore_eos=True)
    t0 = time.perf_counter()
    for n in (1, 2, concurrency):  # warm-up: every batch shape the timed runs see (compiles happen here)
        handles = [model.submit(prompts[i % len(prompts)], params) for i in range(n)]
        [h.tokens() for h in handles]
    warmup = time.perf_counter() - t0

    def single() -> float:
        return rate_after_first(model.submit(prompts[0], params))

    def aggregate() -> float:
        t0 = time.perf_counter()
        handles = [model.submit(prompts[i % len(prompts)], params) for i in range(concurrency)]
        return sum(len(h.tokens()) for h in handles) / (time.perf_counter() - t0)

    result = {"tok_s": statistics.median(single() for _ in range(REPEATS)),
              "aggregate": statistics.median(aggregate() for _ in range(REPEATS)),
              "weight_bytes": layout_bytes(model.engine.core.runner.model), "warmup_s": warmup}
    model.close()
    return result


def peer(gguf: str, threads: int, new_tokens: int) -> dict:
    """In its own process: llama-cpp-python's greedy generate loop on `gguf`, tokens after the first."""
    from llama_cpp import Llama

    from tailorlm.runtime import chat_prompt, open_model

    model = open_model(show_progress=False)  # only for the same chat-templated prompt tokens
    prompt = chat_prompt(model, [{"role": "user", "content": QUESTIONS[0]}])
    model.close()
    llm = Llama(model_path=gguf, n_ctx=1024, n_threads=threads, n_threads_batch=threads, n_batch=512, verbose=False)

    def run() -> float:
        llm.reset()
        return rate_after_first(llm.generate(prompt, top_k=1, temp=0.0, reset=True), limit=new_tokens + 1)

    run()
    return {"tok_s": statistics.median(run() for _ in range(REPEATS)),
            "weight_bytes": sum(t.nbytes for t in _gguf_matrices(gguf))}


def _gguf_matrices(path: str):
    from gguf import GGUFReader

    return [t.data for t in GGUFReader(path).tensors if len(t.shape) > 1]


def main() -> None:
    ap = engine_args(__doc__, 128)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--only", default=None, help="comma-separated labels to run (default: all)")
    ap.add_argument("--child", nargs=3, metavar=("KIND", "MODEL", "ARG"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, name, arg = args.child
        if kind == "peer":
            out = peer(name, args.threads, args.new_tokens)
        else:
            out = native(name, *NATIVE[arg], args.threads, args.new_tokens, args.concurrency)
        print(json.dumps(out))
        return
    from tailorlm.export import default_name, export, target

    settings, store, base, info, bandwidth = start_run(args.model, args.threads)
    wanted = set(args.only.split(",")) if args.only else None
    rows = []
    common = ["--threads", str(args.threads), "--new-tokens", str(args.new_tokens),
              "--concurrency", str(args.concurrency)]
    for label in [*NATIVE, *PEERS]:
        if wanted and label not in wanted:
            continue
        if label in PEERS:
            name = default_name(base, target("gguf", PEERS[label]))
            if store.find(name) is None:
                export(base, "gguf", PEERS[label], settings=settings, show_progress=False)
            gguf = next(store.path(name).glob("*.gguf"))
            cmd = ["--child", "peer", str(gguf), label]
        else:
            cmd = ["--child", "native", base, label]
        out = subprocess.run([sys.executable, __file__, *cmd, *common], capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"{label} failed:\n{out.stderr[-3000:]}")
        measured = json.loads(out.stdout.strip().splitlines()[-1])
        measured["bandwidth_pct"] = 100 * measured["weight_bytes"] * measured["tok_s"] / (bandwidth * 1e9)
        rows.append({"variant": label, **measured})
        print(f"  {label}: {measured['tok_s']:.1f} tok/s", file=sys.stderr)
    print(f"\n{info['date']} · {info['cpu']} · {args.threads} threads · torch {info['torch']} · commit {info['commit']}")
    print(f"streaming-read bandwidth: {bandwidth:.1f} GB/s · {args.new_tokens} new tokens\n")
    print(f"| variant | weights read per token MB | single-stream tok/s | bandwidth used | "
          f"aggregate tok/s at {args.concurrency} |")
    print("|---|---|---|---|---|")
    for r in rows:
        agg = f"{r['aggregate']:.1f}" if "aggregate" in r else "—"
        print(f"| {r['variant']} | {r['weight_bytes'] / 1e6:.0f} | {r['tok_s']:.1f} | {r['bandwidth_pct']:.0f}% | {agg} |")
    by = {r["variant"]: r for r in rows}
    if "llama-cpp-python q8_0" in by:
        for label in [lab for lab in ("native int8", "torch int8, compiled") if lab in by]:
            print(f"\n{label} / llama-cpp-python q8_0: {by[label]['tok_s'] / by['llama-cpp-python q8_0']['tok_s']:.2f}×")
    if "native bf16" in by:
        print(f"native bf16: {by['native bf16']['bandwidth_pct']:.0f}% of the bandwidth limit (bar ≥ 60%)")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "bandwidth_gbs": bandwidth, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
