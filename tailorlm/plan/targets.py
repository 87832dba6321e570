"""The machines a configuration is planned for: memory, sustained read bandwidth, CPU or GPU.

Named targets are data (each figure sourced below); `this-machine` reads /proc/meminfo and measures
its own streaming-read bandwidth once a day (cached under HOME), since decode speed is bounded by it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from tailorlm.engine.cpu import native_bf16
from tailorlm.errors import InvalidRequestError

GIB = 1024**3
THIS_MACHINE = "this-machine"
BANDWIDTH_CACHE = "plan-bandwidth.json"
CACHE_SECONDS = 24 * 3600
SUSTAINED = 0.7  # STREAM-style reads reach ~60-80% of a CPU's theoretical DRAM peak; we plan with 70%


@dataclass(frozen=True)
class Target:
    """A machine: `available_bytes` is what a model server may use (total less what the OS and desktop keep)."""

    name: str
    memory_bytes: int
    available_bytes: int
    bandwidth_gbs: float  # sustained streaming read, GB/s (10^9)
    gpu: bool
    source: str  # where the figures come from, shown in the report
    bf16: bool = False  # multiplies bfloat16 natively (GPUs; CPUs with AVX512-BF16 or AMX): int8 activations are bf16


def _named(name: str, memory_gib: float, reserved_gib: float, bandwidth_gbs: float, gpu: bool, source: str) -> Target:
    return Target(name, int(memory_gib * GIB), int((memory_gib - reserved_gib) * GIB), bandwidth_gbs, gpu, source,
                  bf16=gpu)


TARGETS: dict[str, Target] = {t.name: t for t in (
    # A typical 8 GB laptop: dual-channel DDR4-3200 = 2 x 25.6 GB/s = 51.2 GB/s peak (JEDEC DDR4-3200: 3200 MT/s
    # x 8 bytes per channel); ~2.5 GiB kept by the OS and a desktop session.
    _named("laptop-8gb", 8, 2.5, 51.2 * SUSTAINED, False, "dual-channel DDR4-3200, 51.2 GB/s peak x 0.7"),
    # A 16 GB laptop: dual-channel DDR5-5600 = 2 x 44.8 GB/s = 89.6 GB/s peak (JEDEC DDR5-5600); OS as above.
    _named("laptop-16gb", 16, 3.0, 89.6 * SUSTAINED, False, "dual-channel DDR5-5600, 89.6 GB/s peak x 0.7"),
    # NVIDIA RTX 4090: 24 GB GDDR6X, 1008 GB/s (NVIDIA product specifications); ~0.5 GiB of VRAM kept by the
    # display. GPUs sustain ~90% of peak on streaming reads.
    _named("workstation-24gb-gpu", 24, 0.5, 1008 * 0.9, True, "RTX 4090: 24 GB GDDR6X, 1008 GB/s peak x 0.9"),
    # NVIDIA A100 80GB SXM: 80 GB HBM2e, 2039 GB/s (NVIDIA A100 datasheet); nothing else on the GPU.
    _named("server-80gb-gpu", 80, 0.0, 2039 * 0.9, True, "A100 80GB SXM: HBM2e, 2039 GB/s peak x 0.9"),
    # Raspberry Pi 5 8 GB: LPDDR4X-4267 on a 32-bit bus = 4267 MT/s x 4 bytes = 17.1 GB/s peak (Raspberry Pi 5
    # product brief); ~0.5 GiB kept by a headless Raspberry Pi OS.
    _named("rpi5-8gb", 8, 0.5, 17.1 * SUSTAINED, False, "LPDDR4X-4267 32-bit, 17.1 GB/s peak x 0.7"),
)}
TARGET_NAMES = (*TARGETS, THIS_MACHINE)


def meminfo(path: Path = Path("/proc/meminfo")) -> tuple[int, int]:
    """(MemTotal, MemAvailable) in bytes, from the kernel's own accounting."""
    fields: dict[str, int] = {}
    try:
        for line in path.read_text().splitlines():
            key, _, rest = line.partition(":")
            fields[key] = int(rest.split()[0]) * 1024  # the kernel reports kB
    except (OSError, ValueError, IndexError) as exc:
        raise InvalidRequestError(f"cannot read this machine's memory from {path}: {exc}") from None
    if "MemTotal" not in fields:
        raise InvalidRequestError(f"{path} has no MemTotal line; pass --target to plan for a named machine")
    return fields["MemTotal"], fields.get("MemAvailable", fields["MemTotal"])


def measure_bandwidth(threads: int = 0, size_bytes: int = 512 * 1024**2, repeats: int = 3) -> float:
    """GB/s of a streaming read (a torch sum over `size_bytes`), best of `repeats`, with `threads` threads.

    A sum reads every byte once and does one add per float, so it is bound by memory, like decoding.
    """
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        data = torch.ones(size_bytes // 4, dtype=torch.float32)
        data.sum()  # warm: pages touched, threads started
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            data.sum()
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)
    return size_bytes / best / 1e9


def cached_bandwidth(home: Path, threads: int = 0) -> float:
    """This machine's bandwidth, measured at most once a day per thread count (HOME/plan-bandwidth.json)."""
    path = home / BANDWIDTH_CACHE
    key = str(threads or os.cpu_count() or 1)
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    entry = cache.get(key)
    if isinstance(entry, dict) and time.time() - entry.get("at", 0) < CACHE_SECONDS:
        return float(entry["gbs"])
    gbs = measure_bandwidth(threads)
    cache[key] = {"gbs": gbs, "at": time.time()}
    try:  # a cache is an optimisation: a read-only HOME just measures again next time
        home.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cache))
        tmp.replace(path)
    except OSError:
        pass
    return gbs


def this_machine(home: Path, threads: int = 0, bandwidth_gbs: float | None = None) -> Target:
    """The machine we run on: MemAvailable (what a new process can get without swapping) and measured bandwidth."""
    total, available = meminfo()
    gbs = bandwidth_gbs if bandwidth_gbs is not None else cached_bandwidth(home, threads)
    return Target(THIS_MACHINE, total, available, gbs, False,
                  f"/proc/meminfo MemAvailable; measured streaming read {gbs:.1f} GB/s", bf16=native_bf16())


def get_target(name: str, home: Path, threads: int = 0) -> Target:
    """A named target, or this machine; InvalidRequestError lists the names for anything else."""
    if name == THIS_MACHINE:
        return this_machine(home, threads)
    if name not in TARGETS:
        raise InvalidRequestError(f"unknown target {name!r}; choose one of: {', '.join(TARGET_NAMES)}",
                                  param="target")
    return TARGETS[name]
