"""What this CPU can do, read once from the kernel's CPU flags: one place for every choice made by ISA."""

from __future__ import annotations

import platform
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (/proc/cpuinfo's `flags`, or `Features` on ARM); empty where unreadable."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def describe() -> str:
    """One line naming the CPU's vector features that matter here (for logs and benchmarks)."""
    wanted = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_bf16",
              "asimd", "sve")
    have = [f for f in wanted if f in cpu_flags()]
    return f"{platform.machine()} " + (" ".join(have) if have else "(no vector features listed)")


def native_bf16() -> bool:
    """True when the CPU multiplies bf16 natively (AVX512-BF16 or AMX), so bf16 is faster, not emulated."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def int8_activation_dtype():
    """The activations of weight-only int8 models: bfloat16 where the CPU multiplies it natively, else float32
    (without bf16 instructions, bf16 prefill GEMMs and elementwise work are emulated, several times slower)."""
    import torch

    return torch.bfloat16 if native_bf16() else torch.float32
