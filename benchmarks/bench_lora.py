"""Per-row LoRA cost on the default model, side by side with PEFT's mixed-batch `generate`.

    python benchmarks/bench_lora.py [--threads 2] [--new-tokens 64] [--rank 16] [--adapters 8] [--dtype int8]

--adapters N random adapters (every linear layer of every block, rank --rank) are made with PEFT. Measured
in one run on the same weights and threads: single-stream decode tok/s and aggregate output tok/s at 16
concurrent requests, for the base with no adapter loaded, base requests with the N adapters loaded,
requests of one adapter, and the mix where request i uses adapter i % N (8 distinct adapters over the 16
requests by default, no base rows). The line `mixed N-adapter batch: X.XX× of base aggregate` is that mix's
aggregate over the base's with no adapter loaded (the issue's bar is ≥ 0.80 for N = 8). The peer is PEFT's
`generate(adapter_names=...)` on the same 16-request mix over the same N adapters, one left-padded batch.
--dtype is the base's weight format (default int8, what `tailor serve` picks by default; float32 for the fp32 base);
the adapters stay float32. For an AVX2 run on an AVX-512 machine prefix the command with
`TAILOR_ISA=avx2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import QUESTIONS, engine_args, machine, quiet_torch, rate_after_first  # noqa: E402
from tailorlm.engine import SamplingParams  # noqa: E402
from tailorlm.runtime import chat_prompt, open_model  # noqa: E402

REPEATS = 3
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CONCURRENT = 16


def make_adapters(path: Path, rank: int, count: int, out: Path) -> dict[str, Path]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folders = {}
    for seed, name in enumerate(f"lora{i}" for i in range(count)):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS, init_lora_weights=False)
        get_peft_model(model, config).save_pretrained(out / name)
        folders[name] = out / name
    return folders


def ours(eng, prompts: list[list[int]], new_tokens: int, adapters: list[str | None]) -> dict[str, float]:
    params = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)

    def decode() -> float:
        return rate_after_first(eng.submit(prompts[0], params, adapter=adapters[0]))

    def aggregate() -> float:
        t0 = time.perf_counter()
        handles = [eng.submit(prompts[i % len(prompts)], params, adapter=adapters[i % len(adapters)])
                   for i in range(CONCURRENT)]
        return sum(len(h.tokens()) for h in handles) / (time.perf_counter() - t0)

    eng.submit(prompts[0], SamplingParams(temperature=0, max_tokens=8), adapter=adapters[0]).tokens()  # warm-up
    return {"decode_tps": statistics.median(decode() for _ in range(REPEATS)),
            "aggregate_16": statistics.median(aggregate() for _ in range(REPEATS))}


def peft_mixed(path: Path, folders: dict[str, Path], prompts: list[list[int]], new_tokens: int,
               mix: list[str | None]) -> float:
    """Aggregate tok/s of PEFT's mixed-batch generate: 16 left-padded requests, adapters by row."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").eval()
    (first, folder), *rest = folders.items()
    model = PeftModel.from_pretrained(model, folder, adapter_name=first)
    for name, folder in rest:
        model.load_adapter(folder, adapter_name=name)
    batch = [prompts[i % len(prompts)] for i in range(CONCURRENT)]
    names = [mix[i % len(mix)] or "__base__" for i in range(CONCURRENT)]
    width = max(len(p) for p in batch)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in batch])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])

    def run() -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, do_sample=False, pad_token_id=0, adapter_names=names)
        return CONCURRENT * new_tokens / (time.perf_counter() - t0)

    return statistics.median(run() for _ in range(REPEATS))


def main() -> None:
    ap = engine_args(__doc__, new_tokens=64)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--adapters", type=int, default=8, help="number of distinct adapters in the mix")
    ap.add_argument("--dtype", default="int8", help="the base's weights: int8 (serve's default) or float32, bfloat16")
    args = ap.parse_args()
    if args.adapters < 1:
        ap.error("--adapters must be at least 1")
    quiet_torch(args.threads)

    from tailorlm.config import get_settings

    settings = get_settings().model_copy(update={"dtype": args.dtype, "threads": args.threads})
    model = open_model(args.model, settings=settings, show_progress=True)
    eng, path = model.engine, model.engine.loaded.path
    prompts = [chat_prompt(model, [{"role": "user", "content": q}]) for q in QUESTIONS]
    info = machine()
    print(f"# {model.name} ({args.dtype}) · rank {args.rank} on {len(TARGETS)} layers per block · {info['cpu']} · "
          f"{info['flags']} · {args.threads} threads · {info['date']} · commit {info['commit']}")
    with tempfile.TemporaryDirectory() as tmp:
        folders = make_adapters(path, args.rank, args.adapters, Path(tmp))
        names = list(folders)
        mix_label = f"mix of {len(names)} adapters (request i: adapter i % {len(names)})"
        results = {"base, no adapter loaded": ours(eng, prompts, args.new_tokens, [None])}
        from safetensors.torch import load_file

        for name, folder in folders.items():
            config = json.loads((folder / "adapter_config.json").read_text())
            eng.load_adapter(name, load_file(folder / "adapter_model.safetensors"), config)
        results["base, adapters loaded"] = ours(eng, prompts, args.new_tokens, [None])
        results["one adapter only"] = ours(eng, prompts, args.new_tokens, [names[0]])
        results[mix_label] = ours(eng, prompts, args.new_tokens, names)
        model.close()
        peer = peft_mixed(path, folders, prompts, args.new_tokens, names)
    print("\n| requests | decode tok/s (1 stream) | output tok/s (16 concurrent) |\n|---|---|---|")
    for label, r in results.items():
        print(f"| {label} | {r['decode_tps']:.1f} | {r['aggregate_16']:.1f} |")
    mix = results[mix_label]["aggregate_16"]
    ratio = mix / results["base, no adapter loaded"]["aggregate_16"]
    print(f"| PEFT generate, same mix | - | {peer:.1f} |")
    print(f"\nmixed {len(names)}-adapter batch: {ratio:.2f}× of base aggregate (bar ≥ 0.80)")
    print(f"mixed batch, 16 concurrent: {mix / peer:.2f}× PEFT's mixed-batch generate")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "tailorlm": results, "peft_mixed_16": peer,
                                               "mix_over_base": ratio, "adapters": len(names)}, indent=2))


if __name__ == "__main__":
    main()
