"""One model, every way tailorlm runs it: native fp32 and bf16, GGUF q8_0 and q4_0 through llama.cpp, ONNX int8.

    python benchmarks/bench_export.py [--threads 2] [--new-tokens 128] [--json export.json]

In one run: exports the default model (or --model) to each artifact (reused when already in the store) with
its parity numbers; then, each variant in a fresh process (so peak memory is its own), single-stream decode
tokens/s (median of 3) and peak RSS; and the achieved memory bandwidth — weight bytes read per token × tokens/s
— as a percentage of this machine's streaming-read bandwidth (benchmarks/bandwidth.py), measured in the same run.
Every variant goes through the same engine (scheduler, sampling) and differs only in the backend and weights.
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

# label -> (export format, quant) or None for the stored model itself, and the native dtype
VARIANTS: dict[str, tuple[tuple[str, str] | None, str]] = {
    "native fp32": (None, "float32"),
    "native bf16": (None, "bfloat16"),
    "GGUF q8_0 (llama.cpp)": (("gguf", "q8_0"), "auto"),
    "GGUF q4_0 (llama.cpp)": (("gguf", "q4_0"), "auto"),
    "ONNX int8 (onnxruntime)": (("onnx", "int8"), "auto"),
}


def weight_bytes(folder: Path, dtype: str) -> int:
    """Bytes of weights read per generated token (the whole matrix set; tied embeddings are read as the head)."""
    files = [p for p in folder.iterdir() if p.suffix in (".gguf", ".safetensors") or p.name.startswith("model.onnx")]
    size = sum(p.stat().st_size for p in files)
    if dtype == "bfloat16" and any(p.suffix == ".safetensors" for p in files):
        size //= 2  # stored fp32, run in bf16
    return size


def child(name: str, dtype: str, threads: int, new_tokens: int) -> dict:
    """Runs in its own process: open, warm up, decode; report tok/s and peak RSS."""
    quiet_torch(threads)
    from tailorlm.config import get_settings
    from tailorlm.engine import SamplingParams
    from tailorlm.runtime import chat_prompt, open_model

    settings = get_settings().model_copy(update={"dtype": dtype, "threads": threads, "max_batch": 4})
    model = open_model(name, settings=settings, show_progress=False)
    prompt = chat_prompt(model, [{"role": "user", "content": QUESTIONS[0]}])
    params = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
    model.submit(prompt, SamplingParams(temperature=0, max_tokens=8)).tokens()

    rate = statistics.median(rate_after_first(model.submit(prompt, params)) for _ in range(3))
    peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
    model.close()
    return {"tok_s": rate, "peak_mib": peak / 1024}


def main() -> None:
    ap = engine_args(__doc__, 128)
    ap.add_argument("--child", nargs=2, metavar=("MODEL", "DTYPE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.threads, args.new_tokens)))
        return
    from tailorlm.export import default_name, export, target

    settings, store, base, info, bandwidth = start_run(args.model, args.threads)
    rows = []
    for label, (fmt_quant, dtype) in VARIANTS.items():
        name, parity, export_s = base, None, None
        if fmt_quant is not None:
            name = default_name(base, target(*fmt_quant))
            if store.find(name) is None:
                t0 = time.perf_counter()
                export(base, *fmt_quant, settings=settings, show_progress=False)
                export_s = time.perf_counter() - t0
            parity = json.loads((store.path(name) / "parity.json").read_text())
        out = subprocess.run([sys.executable, __file__, "--child", name, dtype, "--threads", str(args.threads),
                              "--new-tokens", str(args.new_tokens)], capture_output=True, text=True, check=True)
        measured = json.loads(out.stdout.strip().splitlines()[-1])
        per_token = weight_bytes(store.path(name), dtype)
        rows.append({"variant": label, "model": name, **measured, "weight_mb": per_token / 1e6,
                     "bandwidth_pct": 100 * per_token * measured["tok_s"] / (bandwidth * 1e9),
                     "top1": parity and parity["top1"], "top1_decisive": parity and parity.get("top1_decisive"),
                     "kl": parity and parity["kl"], "export_s": export_s})
        print(f"  {label}: {measured['tok_s']:.1f} tok/s, {measured['peak_mib']:.0f} MiB", file=sys.stderr)
    print(f"\n{info['date']} · {info['cpu']} · {args.threads} threads · torch {info['torch']} · commit {info['commit']}")
    print(f"streaming-read bandwidth: {bandwidth:.1f} GB/s · {args.new_tokens} new tokens, single stream\n")
    print("| variant | weights MB | decode tok/s | vs native fp32 | bandwidth used | peak RSS MiB "
          "| top-1 vs source (decisive / all) | KL |")
    print("|---|---|---|---|---|---|---|---|")
    ref = rows[0]["tok_s"]
    for r in rows:
        top1 = f"{r['top1_decisive'] or 0:.1%} / {r['top1']:.1%}" if r["top1"] is not None else "—"
        kl = f"{r['kl']:.4f}" if r["kl"] is not None else "—"
        print(f"| {r['variant']} | {r['weight_mb']:.0f} | {r['tok_s']:.1f} | {r['tok_s'] / ref:.2f}× | "
              f"{r['bandwidth_pct']:.0f}% | {r['peak_mib']:.0f} | {top1} | {kl} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "bandwidth_gbs": bandwidth, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
