"""The parity gate's numbers for a native load dtype of the default model against its stored weights.

    python benchmarks/dtype_parity.py --dtype q4 [--threads 2]

What dtype fast runs for int8 (tailorlm/runtime/fast_dtype.py), for any dtype: the stored weights are the source,
the `--dtype` load the artifact, scored by export/parity.py's `compare` over its golden prompts. Prints top-1
agreement (where the source is decisive, and over all positions) and mean KL, to calibrate THRESHOLDS.
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
    ap.add_argument("--dtype", default="q4", help="int8 or q4 (a THRESHOLDS key)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    quiet_torch(args.threads)
    from transformers import AutoTokenizer

    from tailorlm.config import DEFAULT_MODEL, get_settings
    from tailorlm.engine import load_model, native_step
    from tailorlm.engine.cpu import describe
    from tailorlm.export.parity import compare, golden_prompts
    from tailorlm.export.run import src_eos
    from tailorlm.store import ModelStore

    path = ModelStore(get_settings().home).path(DEFAULT_MODEL)
    print(f"{DEFAULT_MODEL} · {describe()} · kernels {native_step.extension().kernel_isa()}")
    start = time.perf_counter()
    artifact = load_model(path, dtype=args.dtype).runner_factory(1, 512)
    source = load_model(path, dtype="auto").runner_factory(1, 512)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    report = compare(source, artifact, golden_prompts(tokenizer), set(src_eos(path, tokenizer)), args.dtype)
    print(f"{args.dtype}: {report.summary()}; passed {report.passed} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
