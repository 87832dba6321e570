"""Show an estimate: a rich table of memory by part, the speed, and the verdict in one line."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from tailorlm.plan.estimate import MIB, Estimate

WHAT = {
    "runtime": "Python, torch, transformers, tokenizer (measured); the CUDA context on a GPU",
    "weights": "the artifact ({quant}), memory-mapped or loaded",
    "layout copy": "linear weights re-laid for CPU matmuls (native engine)",
    "kv cache": "2 x layers x kv_heads x head_dim x bytes x {context} x {parallel}",
    "kv growth": "the previous cache, alive while the cache grows into a new one",
    "adapters": "LoRA adapters, stored size",
    "prefix cache": "keys/values of shared prompt prefixes, at its capacity (prefix_cache_mb)",
}


def mib(n: float) -> str:
    return f"{n / MIB:,.0f} MiB"


def verdict_line(est: Estimate) -> str:
    """`fits: 1,686 MiB of 22,000 MiB available (92% headroom)` or `does not fit: ...`."""
    share = est.headroom / est.available if est.available else 0.0
    return (f"{est.verdict}: {est.model} needs ~{mib(est.total)} of {mib(est.available)} "
            f"({est.limit_reason}, {est.target}); headroom {mib(est.headroom)} ({share:.0%})")


def table(est: Estimate) -> Table:
    title = (f"{est.model} · {est.engine} {est.quant} · context {est.context} × {est.parallel} parallel "
             f"· {est.target}")
    out = Table(title=title, title_justify="left")
    out.add_column("part")
    out.add_column("memory", justify="right")
    out.add_column("what")
    for part, size in est.parts.items():
        if size:
            out.add_row(part, mib(size), WHAT[part].format(quant=est.quant, context=est.context,
                                                          parallel=est.parallel))
    out.add_row("[bold]total[/bold]", f"[bold]{mib(est.total)}[/bold]", "")
    out.add_row(est.limit_reason, mib(est.available), est.target_source)
    out.add_row("headroom", mib(est.headroom), est.verdict)
    if est.bandwidth_gbs:
        out.add_row("decode", f"{est.decode_tok_s:,.0f} tok/s", "one request, at half the context")
        if est.parallel > 1:
            out.add_row("aggregate", f"{est.aggregate_tok_s:,.0f} tok/s", f"{est.parallel} requests together")
    return out


def show(est: Estimate, console: Console | None = None) -> None:
    """Print the verdict line, the table and the estimate's caveats."""
    console = console or Console()
    console.print(verdict_line(est), highlight=False)
    console.print(table(est))
    for note in est.notes:
        console.print(f"[dim]{note}[/dim]")
