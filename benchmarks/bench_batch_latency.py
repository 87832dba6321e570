"""Interactive latency while a batch runs: the same chat requests alone, then beside a 50-line batch, one server.

    python benchmarks/bench_batch_latency.py [--threads 2] [--lines 50] [--requests 8] [--isa native|avx2]

Starts `tailor serve` on the default model (serve's defaults) in a temporary home (the embedded model pulled into it
first), then, with the official `openai` client:
1. interactive alone: --requests streamed chat completions one after another (64 tokens, temperature 0): time to
   first token and tokens/s after it, medians;
2. uploads a --lines-line batch input (chat completions, 64 tokens each), creates the batch, waits until it is
   running, and repeats (1) while it runs; then waits for the batch to complete and reports its wall time.
The interactive figures with the batch over those without are the cost a batch puts on an interactive user
(batch lines run one at a time at low priority beside interactive rows: docs/decisions.md).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_server import Server, free_port  # noqa: E402
from benchmarks.common import ISA_ENV, QUESTIONS, machine  # noqa: E402

MODEL = "smollm2-135m-instruct"


def interactive(client, n: int, max_tokens: int) -> tuple[float, float]:
    """Medians over n streamed requests: (time to first token ms, tokens/s after the first)."""
    ttft, rate = [], []
    for i in range(n):
        t0 = time.perf_counter()
        first, count = None, 0
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}], max_tokens=max_tokens,
            temperature=0, stream=True, extra_body={"ignore_eos": True})
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                count += 1
                first = first or time.perf_counter()
        end = time.perf_counter()
        ttft.append((first - t0) * 1e3)
        rate.append((count - 1) / (end - first) if count > 1 else 0.0)
    return statistics.median(ttft), statistics.median(rate)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lines", type=int, default=50)
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--isa", choices=sorted(ISA_ENV), default="native")
    args = ap.parse_args()
    from openai import OpenAI

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        env = {**os.environ, "TAILOR_HOME": str(home), **ISA_ENV[args.isa]}
        subprocess.run([sys.executable, "-m", "tailorlm", "pull", MODEL], env=env, check=True, capture_output=True)
        port = free_port()
        server = Server("tailorlm", [sys.executable, "-m", "tailorlm", "serve", "--port", str(port), "--threads",
                                     str(args.threads)], port, Path(tmp) / "serve.log", env=env)
        server.start()
        try:
            client = OpenAI(base_url=f"{server.base}/v1", api_key="none", max_retries=0)
            interactive(client, 2, args.max_tokens)  # warm-up
            alone = interactive(client, args.requests, args.max_tokens)
            lines = "\n".join(json.dumps({
                "custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": MODEL, "max_tokens": args.max_tokens, "temperature": 0,
                         "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]}})
                for i in range(args.lines))
            file = client.files.create(file=("batch.jsonl", io.BytesIO(lines.encode())), purpose="batch")
            t0 = time.perf_counter()
            batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                                          completion_window="24h")
            while client.batches.retrieve(batch.id).status not in ("in_progress", "finalizing", "completed"):
                time.sleep(0.1)
            beside = interactive(client, args.requests, args.max_tokens)
            done_during = client.batches.retrieve(batch.id).request_counts.completed
            while (b := client.batches.retrieve(batch.id)).status not in ("completed", "failed", "expired"):
                time.sleep(0.5)
            batch_s = time.perf_counter() - t0
        finally:
            server.stop()
    info = machine()
    print(f"{info['date']} · {info['cpu']} · {info['flags']} · isa {args.isa} · commit {info['commit']}")
    print(f"batch: {args.lines} lines, {b.status}, {b.request_counts.completed} completed, {batch_s:.1f} s "
          f"({done_during} lines done while the interactive requests ran)")
    print("| interactive, one at a time | TTFT p50 ms | tok/s after the first (p50) |\n|---|---|---|")
    print(f"| alone | {alone[0]:.0f} | {alone[1]:.1f} |")
    print(f"| beside the running batch | {beside[0]:.0f} | {beside[1]:.1f} |")
    print(f"| ratio (beside / alone) | {beside[0] / alone[0]:.2f}× | {beside[1] / alone[1]:.2f}× |")


if __name__ == "__main__":
    main()
