"""Memory bandwidth probe: the decode limit of a CPU (every weight is read once per generated token).

    python benchmarks/bandwidth.py [--threads 2] [--gib 1]

A streaming read (torch sum) over a buffer far larger than the caches, best of 5, in GB/s (10^9 bytes/s).
Every decode figure in docs/benchmarks.md quotes its achieved bandwidth — weight bytes read per token ×
tokens/s — as a percentage of this.
"""

from __future__ import annotations

import argparse
import time

import torch


def measure(threads: int = 2, gib: float = 1.0, repeats: int = 5) -> float:
    """Best streaming-read rate over `repeats` passes, GB/s."""
    torch.set_num_threads(threads)
    buf = torch.ones(int(gib * 2**30) // 4, dtype=torch.float32)
    buf.sum()  # touch every page first
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        buf.sum()
        best = min(best, time.perf_counter() - t0)
    return buf.numel() * 4 / best / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gib", type=float, default=1.0)
    args = ap.parse_args()
    print(f"{measure(args.threads, args.gib):.1f} GB/s streaming read, {args.threads} threads")


if __name__ == "__main__":
    main()
