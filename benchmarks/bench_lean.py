"""The lean decode step against transformers' own forward, on the same runner, cache and weights.

    python benchmarks/bench_lean.py [--threads 2] [--dtypes float32,bfloat16,int8] [--steps 30]

For each dtype: one ModelRunner over the default model (or --model); 1 and 16 rows prefilled (30–45 tokens), then
--steps greedy decode steps through `LeanDecoder` (tailorlm/engine/decoder.py) and through the transformers
modules, alternated twice so that drift shows. Runner-level: no scheduler, no sampling beyond argmax.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import engine_args, machine, quiet_torch  # noqa: E402


def main() -> None:
    ap = engine_args(__doc__, new_tokens=30)
    ap.add_argument("--dtypes", default="float32,bfloat16,int8")
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    quiet_torch(args.threads)
    from tailorlm.config import get_settings
    from tailorlm.engine.loader import load_model
    from tailorlm.engine.runner import ModelRunner
    from tailorlm.store import ModelStore

    settings = get_settings()
    store = ModelStore(settings.home)
    path = store.path(store.ensure(args.model or settings.default_model).name)
    info = machine()
    print(f"{info['date']} · {info['cpu']} · {args.threads} threads · commit {info['commit']}\n")
    print("| dtype | rows | lean step ms | transformers forward ms | speed-up |\n|---|---|---|---|---|")
    for dtype in args.dtypes.split(","):
        loaded = load_model(path, dtype=dtype)
        runner = ModelRunner(loaded.model, max_slots=16, context_length=2048, int8=loaded.int8)
        lean = runner.lean
        with torch.inference_mode():
            for rows in (1, 16):
                for b in range(rows):
                    runner.prefill(b, list(range(100, 130 + b)), 0)
                times: dict[str, list[float]] = {"lean": [], "transformers": []}
                for label in ("lean", "transformers") * 2:
                    runner.lean = lean if label == "lean" else None
                    tokens, positions = [5] * rows, [30 + b for b in range(rows)]
                    for i in range(3 + args.steps):
                        if i == 3:
                            t0 = time.perf_counter()
                        tokens = runner.decode(tokens, [p + i for p in positions]).argmax(-1).tolist()
                    times[label].append((time.perf_counter() - t0) / args.steps * 1e3)
                ours, theirs = min(times["lean"]), min(times["transformers"])
                print(f"| {dtype} | {rows} | {ours:.2f} | {theirs:.2f} | {theirs / ours:.2f}× |")


if __name__ == "__main__":
    main()
