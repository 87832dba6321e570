"""Where one decode step's time goes: the torch profiler over single-stream decode steps of the default model.

    python benchmarks/profile_decode.py [--threads 2] [--steps 32] [--dtype float32] [--compile] [--kernels native]
                                        [--out profile-decode]

Writes `OUT/table.md` (operators by self CPU time, grouped into matmuls, attention, elementwise/norms, cache
writes, sampling and the rest, plus the Python-side remainder) and `OUT/trace.json` (open in chrome://tracing or
Perfetto). The step measured is the engine's own `EngineCore.step()`, scheduler and sampling included. The C++
decode step (kernels native) is one call the torch profiler does not see inside: its own phase timers (thread 0's
clock between the step's barriers) give the split, in a second table.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import QUESTIONS, machine, quiet_torch  # noqa: E402

GROUPS = [  # (group, substrings of operator names), first match wins
    ("attention", ("scaled_dot_product", "attention", "softmax", "bmm")),
    ("matmul (linear layers, lm head)", ("mkldnn", "linear", "int8pack", "addmm", "matmul", "mm")),
    ("compiled graph's own kernels (norms, RoPE, attention, cache writes)", ("compiledfxgraph",)),
    ("dynamo guard check", ("dynamo cache lookup",)),
    ("KV cache writes", ("index_put", "copy_", "slice_scatter")),
    ("sampling", ("argmax", "topk", "sort", "multinomial", "log_softmax", "cumsum")),
    ("norms and elementwise", ("mul", "add", "rsqrt", "pow", "mean", "silu", "neg", "cat", "cos", "sin", "sub")),
]


def group_of(name: str) -> str:
    lowered = name.lower()
    for group, keys in GROUPS:
        if any(k in lowered for k in keys):
            return group
    return "other operators"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--dtype", default="float32", help="float32, bfloat16 or int8")
    ap.add_argument("--compile", action="store_true", help="the compiled torch decode step (int8)")
    ap.add_argument("--kernels", default="native", help="native (the C++ step) or torch")
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default="profile-decode")
    args = ap.parse_args()
    quiet_torch(args.threads)
    import torch
    from torch.profiler import ProfilerActivity, profile

    from tailorlm.config import get_settings
    from tailorlm.engine import SamplingParams
    from tailorlm.runtime import chat_prompt, open_model

    settings = get_settings().model_copy(update={"threads": args.threads, "dtype": args.dtype,
                                                 "compile": args.compile, "kernels": args.kernels})
    model = open_model(args.model, settings=settings, show_progress=False)
    core = model.engine.core  # driven directly, in this thread, so the profiler sees every step
    prompt = chat_prompt(model, [{"role": "user", "content": QUESTIONS[0]}])
    req = core.make_request("profiled", prompt, SamplingParams(temperature=0, max_tokens=3 * args.steps + 40,
                                                               ignore_eos=True), lambda event: None)
    core.add(req)
    torch.set_grad_enabled(False)
    for _ in range(8):  # prefill and warm-up steps
        core.step()
    t0 = time.perf_counter()
    for _ in range(args.steps):  # the plain step, for its wall time (the profiler slows steps down)
        core.step()
    wall = (time.perf_counter() - t0) / args.steps
    native = core.runner.native
    phases: dict[str, float] = {}
    if native is not None:  # the C++ step's own split of the same steps
        native.step.set_profile(True)
        native.step.take_profile()
        for _ in range(args.steps):
            core.step()
        phases = {k: v * 1000 / args.steps for k, v in native.step.take_profile().items()}
        native.step.set_profile(False)
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            core.step()
    profiled = (time.perf_counter() - t0) / args.steps
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(out / "trace.json"))
    by_group: dict[str, float] = defaultdict(float)
    for evt in prof.key_averages():
        if evt.self_cpu_time_total > 0:
            by_group[group_of(evt.key)] += evt.self_cpu_time_total / 1e3 / args.steps  # ms per step
    ops = sum(by_group.values())
    info = machine()
    lines = [f"{info['date']} · {info['cpu']} · {args.threads} threads · torch {info['torch']} · "
             f"commit {info['commit']} · {args.dtype}{' compiled' if args.compile else ''} · "
             f"{'C++ step' if native is not None else 'torch step'} · "
             f"{args.steps} single-stream decode steps",
             "", f"step: {wall * 1000:.1f} ms without the profiler ({1 / wall:.1f} tok/s), "
             f"{profiled * 1000:.1f} ms with it", "",
             "| where | ms per step | share of operator time |", "|---|---|---|"]
    for group, ms in sorted(by_group.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {group} | {ms:.2f} | {100 * ms / ops:.0f}% |")
    lines.append(f"| the plain step's wall time minus operator time (Python, scheduling, dispatch) | "
                 f"{max(wall * 1000 - ops, 0):.2f} | — |")
    if phases:
        inside = sum(phases.values())
        lines += ["", "Inside the C++ step (its phase timers, same steps without the torch profiler):", "",
                  "| phase | ms per step | share of the step's wall time |", "|---|---|---|"]
        for name, ms in sorted(phases.items(), key=lambda kv: -kv[1]):
            lines.append(f"| {name} | {ms:.2f} | {100 * ms / (wall * 1000):.0f}% |")
        lines.append(f"| outside the C++ call (scheduler, sampling, Python) | {max(wall * 1000 - inside, 0):.2f} | "
                     f"{100 * max(wall * 1000 - inside, 0) / (wall * 1000):.0f}% |")
    lines += ["", "Top operators by self CPU time:", "", "```",
              prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15), "```"]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:len(by_group) + 8 + (len(phases) + 5 if phases else 0)]))
    model.close()


if __name__ == "__main__":
    main()
