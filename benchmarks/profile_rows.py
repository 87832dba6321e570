"""The C++ decode step's time per phase at 1, 8 and 16 rows, on the default model (no scheduler, no sampling).

    python benchmarks/profile_rows.py [--dtype int8|q4] [--threads 2] [--adapters N]

Prefills 16 slots with a 64-token prompt, then times 20 steps per batch size through `ModelRunner.decode`, with the
step's own phase timers (thread 0's clock between its barriers). Prints the CPU's vector features first.
With --adapters N, N random rank-16 LoRA adapters on the 7 linear layers of every block (bench_lora.py's) are
loaded and row i decodes through adapter i % N.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import quiet_torch  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="int8", help="float32, bfloat16, int8 or q4")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--adapters", type=int, default=0, help="rows decode through N random adapters (0: none)")
    args = ap.parse_args()
    quiet_torch(args.threads)
    from tailorlm.config import DEFAULT_MODEL, get_settings
    from tailorlm.engine import load_model
    from tailorlm.engine import native_step
    from tailorlm.engine.cpu import describe
    from tailorlm.engine.runner import ModelRunner
    from tailorlm.store import ModelStore

    loaded = load_model(ModelStore(get_settings().home).path(DEFAULT_MODEL), dtype=args.dtype)
    r = ModelRunner(loaded.model, max_slots=16, context_length=512, int8=loaded.int8, q4=loaded.q4,
                    kernels="native")
    print(f"{describe()} · kernels {native_step.extension().kernel_isa()}")
    names = [None]
    if args.adapters:
        import json
        import tempfile

        from safetensors.torch import load_file

        from benchmarks.bench_lora import make_adapters
        from tailorlm.engine.lora import linear_features, lora_from_peft

        with tempfile.TemporaryDirectory() as tmp:
            folders = make_adapters(ModelStore(get_settings().home).path(DEFAULT_MODEL), 16, args.adapters, Path(tmp))
            for name, folder in folders.items():
                config = json.loads((folder / "adapter_config.json").read_text())
                r.lora.add(name, lora_from_peft(config, load_file(folder / "adapter_model.safetensors"),
                                                linear_features(r.model), r.dtype))
        names = list(folders)
    for slot in range(16):
        r.prefill(slot, list(range(100, 164)), 0)
    step = r.native.step
    for rows in (1, 8, 16):
        tokens, positions = [5] * rows, [64] * rows
        adapters = [names[i % len(names)] for i in range(rows)]
        for _ in range(3):
            r.decode(tokens, positions, adapters)
        step.set_profile(True)
        step.take_profile()
        start, n = time.perf_counter(), 20
        for _ in range(n):
            r.decode(tokens, positions, adapters)
        ms = (time.perf_counter() - start) / n * 1e3
        phases = step.take_profile()
        step.set_profile(False)
        print(f"{args.dtype} rows={rows}: {ms:.2f} ms/step, {rows / ms * 1e3:.0f} tok/s; "
              + ", ".join(f"{k} {v / n * 1e3:.2f} ms" for k, v in phases.items()))


if __name__ == "__main__":
    main()
