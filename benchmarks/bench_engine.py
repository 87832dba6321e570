"""Engine throughput on the default model, side by side with transformers `generate`.

    python benchmarks/bench_engine.py [--threads 2] [--new-tokens 128]

Measures, in one run and on the same weights and threads: single-stream decode tok/s, prefill tok/s,
and aggregate output tok/s at 1, 4 and 16 concurrent requests — for tailorlm's engine and for
transformers `generate` (one request at a time, and batched with left padding).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import QUESTIONS, engine_args, machine, quiet_torch, rate_after_first  # noqa: E402
from tailorlm.engine import SamplingParams  # noqa: E402
from tailorlm.runtime import chat_prompt, open_model  # noqa: E402


REPEATS = 3


def best(fn) -> float:
    """Median of REPEATS runs of a rate measurement."""
    return statistics.median(fn() for _ in range(REPEATS))


def ours(model, prompts: list[list[int]], new_tokens: int, long_prompt: list[int]) -> dict[str, float]:
    eng = model.engine
    params = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
    eng.submit(prompts[0], SamplingParams(temperature=0, max_tokens=8)).tokens()  # warm-up

    def decode() -> float:  # single stream: decode rate after the first token
        return rate_after_first(eng.submit(prompts[0], params))

    def prefill() -> float:  # time to first token of a long prompt
        t0 = time.perf_counter()
        eng.submit(long_prompt, SamplingParams(temperature=0, max_tokens=1)).tokens()
        return len(long_prompt) / (time.perf_counter() - t0)

    def aggregate(conc: int) -> float:
        t0 = time.perf_counter()
        handles = [eng.submit(prompts[i % len(prompts)], params) for i in range(conc)]
        return sum(len(h.tokens()) for h in handles) / (time.perf_counter() - t0)

    out = {"decode_tps": best(decode), "prefill_tps": best(prefill)}
    for conc in (1, 4, 16):
        out[f"aggregate_{conc}"] = best(lambda: aggregate(conc))
    return out


def reference(path: Path, prompts: list[list[int]], new_tokens: int, long_prompt: list[int]) -> dict[str, float]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").eval()
    kw = dict(do_sample=False, pad_token_id=0)

    def run(batch: list[list[int]], n: int) -> float:
        width = max(len(p) for p in batch)
        ids = torch.tensor([[0] * (width - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        t0 = time.perf_counter()
        with torch.inference_mode():
            model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, **kw)
        return time.perf_counter() - t0

    run(prompts[:1], 8)  # warm-up
    first = statistics.median(run(prompts[:1], 1) for _ in range(REPEATS))
    total = statistics.median(run(prompts[:1], new_tokens) for _ in range(REPEATS))
    out = {"decode_tps": (new_tokens - 1) / (total - first), "aggregate_1": new_tokens / total}
    out["prefill_tps"] = best(lambda: len(long_prompt) / run([long_prompt], 1))
    for conc in (4, 16):
        batch = [prompts[i % len(prompts)] for i in range(conc)]
        out[f"aggregate_{conc}"] = best(lambda: conc * new_tokens / run(batch, new_tokens))
    return out


def main() -> None:
    args = engine_args(__doc__, new_tokens=128).parse_args()
    quiet_torch(args.threads)

    model = open_model(args.model, show_progress=True)
    prompts = [chat_prompt(model, [{"role": "user", "content": q}]) for q in QUESTIONS]
    text = " ".join(QUESTIONS * 8)
    long_prompt = model.tokenizer.encode(text, add_special_tokens=False)[:512]
    info = machine()
    print(f"# {model.name} · {info['cpu']} · {args.threads} threads · {info['date']}")
    mine = ours(model, prompts, args.new_tokens, long_prompt)
    path = model.engine.loaded.path
    model.close()
    theirs = reference(path, prompts, args.new_tokens, long_prompt)
    rows = [
        ("single-stream decode tok/s", "decode_tps"),
        ("prefill tok/s (512-token prompt)", "prefill_tps"),
        ("aggregate output tok/s, 1 request", "aggregate_1"),
        ("aggregate output tok/s, 4 concurrent", "aggregate_4"),
        ("aggregate output tok/s, 16 concurrent", "aggregate_16"),
    ]
    print("\n| measure | tailorlm | transformers generate | ratio |\n|---|---|---|---|")
    for label, key in rows:
        print(f"| {label} | {mine[key]:.1f} | {theirs[key]:.1f} | {mine[key] / theirs[key]:.2f}× |")
    scale = mine["aggregate_16"] / mine["decode_tps"]
    print(f"\naggregate at 16 concurrent / own single-stream decode: {scale:.2f}× (bar ≥ 4×)")
    print(f"single-stream decode vs transformers: {mine['decode_tps'] / theirs['decode_tps']:.2f}× (bar ≥ 1.0×)")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "tailorlm": mine, "transformers": theirs}, indent=2))


if __name__ == "__main__":
    main()
