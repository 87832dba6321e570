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


# What a forced ISA (the `isa` setting: run as a narrower CPU would) takes away from the CPU's flags.
_DROPPED = {"avx2": ("avx512", "amx"), "generic": ("avx512", "amx", "avx2", "fma", "avx_vnni")}


def effective_flags() -> frozenset[str]:
    """The CPU's flags as the `isa` setting lets them be used: with isa avx2 on an AVX-512 CPU, no AVX-512 and no
    AMX, so every choice made by ISA (bf16 activations, training dtype) is the one an AVX2 machine makes."""
    from tailorlm.config import get_settings

    dropped = _DROPPED.get(get_settings().isa, ())
    return frozenset(f for f in cpu_flags() if not f.startswith(dropped))


def describe() -> str:
    """One line naming the CPU's vector features that matter here (for logs and benchmarks), and a forced ISA."""
    from tailorlm.config import get_settings

    wanted = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_bf16",
              "asimd", "sve")
    have = [f for f in wanted if f in cpu_flags()]
    isa = get_settings().isa
    return (f"{platform.machine()} " + (" ".join(have) if have else "(no vector features listed)")
            + (f" (isa forced to {isa})" if isa != "native" else ""))


def native_bf16() -> bool:
    """True when the CPU multiplies bf16 natively (AVX512-BF16 or AMX) and the `isa` setting allows it, so bf16
    is faster, not emulated."""
    return bool({"avx512_bf16", "amx_bf16"} & effective_flags())


def int8_activation_dtype():
    """The activations of weight-only int8 models: bfloat16 where the CPU multiplies it natively, else float32
    (without bf16 instructions, bf16 prefill GEMMs and elementwise work are emulated, several times slower)."""
    import torch

    return torch.bfloat16 if native_bf16() else torch.float32
