"""Load on the OpenAI-compatible server, side by side with llama.cpp's `llama-server`, in one run.

    python benchmarks/bench_server.py [--threads 2] [--concurrency 1,8,32] [--rounds 4] [--slots-per-level] [--dtype default] [--json out.json]

Starts `tailor serve` (as `python -m tailorlm serve`, TAILOR_HOME as given) and then `llama-server` on a GGUF
converted from the very same stored weights (f32), and optionally on a q8_0 quantization of them (lower
precision than ours: a second reference row, not a like-for-like one). Servers run one at a time, so they never
compete for the cores; the load generator (httpx, async, streaming) runs on the same machine as the server.

Each request: one of the fixed chat prompts (benchmarks/common.py QUESTIONS), max_tokens 128, temperature 0,
`ignore_eos: true` (both servers accept it) so every request yields exactly max_tokens tokens, streamed with
`stream_options.include_usage`. llama-server also gets `cache_prompt: false`, so it prefills every prompt as ours
does. At each concurrency C a closed loop of C clients sends C × rounds requests (at least --min-requests).
By default each server runs once, sized for the largest level (32 slots); with --slots-per-level each is restarted
per level with slots = concurrency. llama-server's throughput at 8 requests depends a lot on that (see README).

Per server and concurrency: requests/s, output tokens/s (sum of usage.completion_tokens / wall time), p50 and p99
time to first token (first non-empty content delta; p99 is nearest-rank, so with few requests it is the max),
and, for evidence, time per output token after the first and server CPU seconds per 1,000 output tokens.
Needs llama-server built: see benchmarks/README.md (`python benchmarks/llamacpp.py build`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import llamacpp  # noqa: E402
from benchmarks.common import ISA_ENV, QUESTIONS, machine  # noqa: E402

OURS = "tailorlm"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (no interpolation): with n < 100 values, p99 is the max."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


# -- servers --------------------------------------------------------------------------------------


@dataclass
class Server:
    label: str
    cmd: list[str]
    port: int
    log: Path
    env: dict[str, str] | None = None
    extra_body: dict = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 300) -> float:
        """Start and wait for GET /health to answer 200; returns the seconds it took."""
        t0 = time.perf_counter()
        out = self.log.open("w")
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} exited with {self.proc.returncode}; see {self.log}:\n"
                                   + "\n".join(self.log.read_text().splitlines()[-20:]))
            try:
                if httpx.get(f"{self.base}/health", timeout=2).status_code == 200:
                    return time.perf_counter() - t0
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"{self.label} did not become healthy in {timeout:.0f}s; see {self.log}")

    def cpu_seconds(self) -> float:
        """User + system CPU of the server process (all its threads) so far."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def rss_mib(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):  # peak resident set
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -- load -----------------------------------------------------------------------------------------


@dataclass
class Result:
    ok: bool
    status: int = 0
    error: str = ""
    ttft: float = float("nan")
    seconds: float = float("nan")
    tpot: float = float("nan")  # seconds per output token after the first
    prompt_tokens: int = 0
    completion_tokens: int = 0
    content_chunks: int = 0


async def one_request(client: httpx.AsyncClient, server: Server, model: str, question: str,
                      max_tokens: int) -> Result:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
        **server.extra_body,
    }
    t0 = time.perf_counter()
    first = last = None
    chunks = 0
    usage = None
    async with client.stream("POST", f"{server.base}/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            text = (await resp.aread()).decode(errors="replace")
            return Result(False, resp.status_code, text[:300])
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            obj = json.loads(data)
            if obj.get("usage"):
                usage = obj["usage"]
            for choice in obj.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    last = time.perf_counter()
                    first = first or last
                    chunks += 1
    end = time.perf_counter()
    if first is None:
        return Result(False, 200, "no content streamed")
    completion = usage["completion_tokens"] if usage else chunks
    return Result(
        True, 200, "" if usage else "no usage in stream (counted content chunks)",
        ttft=first - t0, seconds=end - t0,
        tpot=(last - first) / (completion - 1) if completion > 1 else float("nan"),
        prompt_tokens=usage["prompt_tokens"] if usage else 0, completion_tokens=completion, content_chunks=chunks,
    )


async def run_level(server: Server, model: str, concurrency: int, requests: int, max_tokens: int) -> dict:
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    results: list[Result] = []
    next_index = 0
    async with httpx.AsyncClient(timeout=httpx.Timeout(900.0), limits=limits) as client:

        async def worker() -> None:
            nonlocal next_index
            while next_index < requests:
                i = next_index
                next_index += 1
                try:
                    results.append(await one_request(client, server, model, QUESTIONS[i % len(QUESTIONS)], max_tokens))
                except (httpx.HTTPError, json.JSONDecodeError, KeyError) as exc:
                    results.append(Result(False, 0, f"{type(exc).__name__}: {exc}"))

        load0 = loadavg()
        cpu0, client_cpu0, t0 = server.cpu_seconds(), time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
        cpu, client_cpu = server.cpu_seconds() - cpu0, time.process_time() - client_cpu0
    ok = [r for r in results if r.ok]
    tokens = sum(r.completion_tokens for r in ok)
    errors = sorted({f"{r.status} {r.error}" for r in results if not r.ok or r.error})
    return {
        "concurrency": concurrency,
        "requests": requests,
        "ok": len(ok),
        "wall_s": wall,
        "requests_per_s": len(ok) / wall,
        "output_tps": tokens / wall,
        "ttft_p50_ms": 1000 * percentile([r.ttft for r in ok], 50),
        "ttft_p99_ms": 1000 * percentile([r.ttft for r in ok], 99),
        "tpot_p50_ms": 1000 * percentile([r.tpot for r in ok if not math.isnan(r.tpot)], 50),
        "completion_tokens_min": min((r.completion_tokens for r in ok), default=0),
        "completion_tokens_max": max((r.completion_tokens for r in ok), default=0),
        "prompt_tokens_mean": statistics.mean(r.prompt_tokens for r in ok) if ok else 0,
        "content_chunks_mean": statistics.mean(r.content_chunks for r in ok) if ok else 0,
        "server_cpu_s_per_1k_tokens": 1000 * cpu / tokens if tokens else float("nan"),
        "server_cpu_utilisation": cpu / wall,
        "client_cpu_s": client_cpu,
        "loadavg_1min": [load0, loadavg()],  # before / after: the machine is shared
        "ttft_ms_each": [round(1000 * r.ttft, 1) for r in ok],  # in completion order
        "errors": errors,
    }


def _warm_up(server: Server, model: str, slots: int) -> float:
    """Loads our model (lazily, on first use) and touches the batch sizes about to be measured."""
    t0 = time.perf_counter()
    asyncio.run(run_level(server, model, 1, 1, 8))
    asyncio.run(run_level(server, model, slots, slots, 4))
    return time.perf_counter() - t0


def _level(server: Server, model: str, c: int, n: int, max_tokens: int) -> dict:
    row = asyncio.run(run_level(server, model, c, n, max_tokens))
    print(f"  c={c:<3} {n:>3} req  {row['wall_s']:6.1f}s  {row['requests_per_s']:6.2f} req/s  "
          f"{row['output_tps']:7.1f} tok/s  TTFT p50 {row['ttft_p50_ms']:7.0f} ms  p99 "
          f"{row['ttft_p99_ms']:7.0f} ms  tokens/req {row['completion_tokens_min']}–"
          f"{row['completion_tokens_max']}  server CPU {row['server_cpu_utilisation']:.2f} cores"
          + (f"  errors: {row['errors']}" if row["errors"] else ""), flush=True)
    return row


def measure(make: Callable[[int], Server], model: str, levels: list[int], rounds: int, min_requests: int,
            max_tokens: int, per_level: bool) -> dict:
    """One server for all levels (sized for the largest), or with `per_level` a fresh one sized to each level."""
    out: dict = {"levels": {}, "commands": {}}
    groups = [[c] for c in levels] if per_level else [levels]
    for group in groups:
        server = make(max(group))
        print(f"\n## {server.label}: {' '.join(server.cmd)}", flush=True)
        started = server.start()
        try:
            warm = _warm_up(server, model, max(group))
            print(f"healthy after {started:.1f}s, warm-up {warm:.1f}s (log: {server.log})", flush=True)
            for c in group:
                out["levels"][str(c)] = _level(server, model, c, max(c * rounds, min_requests), max_tokens)
                out["commands"][str(c)] = " ".join(server.cmd)
            out["peak_rss_mib"] = max(out.get("peak_rss_mib", 0), server.rss_mib())
        finally:
            server.stop()
    return out


# -- setup ----------------------------------------------------------------------------------------


def prompt_lengths(folder: Path) -> list[int]:
    from tailorlm.chat import render_chat
    from tailorlm.chat.tokenizer import load_tokenizer

    tok = load_tokenizer(folder)
    return [len(render_chat(tok, [{"role": "user", "content": q}])) for q in QUESTIONS]


def ours_server(args, home: Path, log_dir: Path) -> Callable[[int], Server]:
    def make(slots: int) -> Server:
        port = free_port()
        # serve's own defaults (dtype fast, the KV budget sized by its pre-flight check) unless --dtype is given
        cmd = [sys.executable, "-m", "tailorlm", "serve", "--port", str(port), "--threads", str(args.threads),
               "--max-batch", str(slots), *(["--dtype", args.dtype] if args.dtype != "default" else [])]
        env = {**os.environ, "TAILOR_HOME": str(home), **ISA_ENV[args.isa]}
        return Server(OURS, cmd, port, log_dir / f"tailorlm-{slots}.log", env=env)
    return make


def peer_ctx(slots: int, longest_prompt: int, max_tokens: int) -> int:
    """-c for llama-server: it splits the context among --parallel slots, and each slot must hold prompt + output."""
    return 256 * math.ceil(slots * (longest_prompt + max_tokens) / 256)


def peer_server(label: str, gguf: Path, model: str, args, longest_prompt: int,
                log_dir: Path) -> Callable[[int], Server]:
    def make(slots: int) -> Server:
        port = free_port()
        cmd = [str(llamacpp.find_server(args.isa)), "-m", str(gguf), "-t", str(args.threads), "-tb", str(args.threads),
               "--parallel", str(slots), "-c", str(peer_ctx(slots, longest_prompt, args.max_tokens)),
               "--host", "127.0.0.1", "--port", str(port), "--alias", model, *args.peer_args.split()]
        return Server(label, cmd, port, log_dir / f"{label.replace(' ', '_')}-{slots}.log",
                      extra_body={"cache_prompt": False})
    return make


MEASURES = [
    ("requests/s", "requests_per_s", "{:.2f}"),
    ("output tok/s", "output_tps", "{:.1f}"),
    ("TTFT p50 ms (lower is better)", "ttft_p50_ms", "{:.0f}"),
    ("TTFT p99 ms (lower is better)", "ttft_p99_ms", "{:.0f}"),
]


def table(results: dict[str, dict], levels: list[int]) -> str:
    peers = [k for k in results if k != OURS]
    ours = OURS in results
    head = "| concurrency | measure | " + ("tailorlm | " if ours else "")
    head += " | ".join(f"{p} | ours / {p}" if ours else p for p in peers) + " |"
    lines = [head, "|" + "---|" * (2 + ours + (1 + ours) * len(peers))]
    for c in levels:
        for label, key, fmt in MEASURES:
            cells = [str(c), label]
            if ours:
                mine = results[OURS]["levels"][str(c)][key]
                cells.append(fmt.format(mine))
            for p in peers:
                theirs = results[p]["levels"][str(c)][key]
                cells.append(fmt.format(theirs))
                if ours:
                    cells.append(f"{mine / theirs:.2f}×" if theirs else "–")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def details(results: dict[str, dict], levels: list[int]) -> str:
    lines = ["| server | concurrency | requests | wall s | tokens/request | prompt tokens (mean) | "
             "TPOT p50 ms | server CPU (cores) | server CPU s / 1k tokens | client CPU s | load avg before→after | errors |",
             "|" + "---|" * 12]
    for name, res in results.items():
        for c in levels:
            r = res["levels"][str(c)]
            toks = (str(r["completion_tokens_min"]) if r["completion_tokens_min"] == r["completion_tokens_max"]
                    else f"{r['completion_tokens_min']}–{r['completion_tokens_max']}")
            lines.append(f"| {name} | {c} | {r['ok']}/{r['requests']} | {r['wall_s']:.1f} | {toks} | "
                         f"{r['prompt_tokens_mean']:.1f} | {r['tpot_p50_ms']:.1f} | {r['server_cpu_utilisation']:.2f} | "
                         f"{r['server_cpu_s_per_1k_tokens']:.1f} | {r['client_cpu_s']:.1f} | "
                         f"{r['loadavg_1min'][0]:.1f}→{r['loadavg_1min'][1]:.1f} | "
                         f"{'; '.join(r['errors']) or '–'} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--concurrency", default="1,8,32", help="comma-separated levels (default 1,8,32)")
    ap.add_argument("--rounds", type=int, default=4, help="requests per level = concurrency × rounds")
    ap.add_argument("--min-requests", type=int, default=4, help="at least this many requests per level")
    ap.add_argument("--model", default=None, help="store name (default: the embedded default)")
    ap.add_argument("--home", type=Path, default=None, help="our store (default: $TAILOR_HOME or the platform default)")
    ap.add_argument("--dtype", default="default",
                    help="our dtype (default: serve's own, i.e. fast; or auto, float32, bfloat16, int8)")
    ap.add_argument("--peers", default="f32,q8_0",
                    help="llama-server weight types to run (f32 = the same weights as ours; q8_0 = lower precision)")
    ap.add_argument("--peer-args", default="", help="extra llama-server arguments, e.g. '-kvu' (one string)")
    ap.add_argument("--slots-per-level", action="store_true",
                    help="restart each server for each level with slots = concurrency (ours --max-batch C, "
                         "llama-server --parallel C); default: one server per engine, sized for the largest level")
    ap.add_argument("--skip-ours", action="store_true", help="only run the peer(s)")
    ap.add_argument("--log-dir", type=Path, default=None, help="server logs (default: a new temporary folder)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--isa", choices=tuple(ISA_ENV), default="native",
                    help="avx2: both servers as on an AVX2-only CPU (ours with TAILOR_ISA=avx2 and torch/oneDNN capped "
                         "at AVX2, llama-server from its AVX2 build: `python benchmarks/llamacpp.py build --isa avx2`)")
    args = ap.parse_args()
    args.levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    peers = [p.strip().lower() for p in args.peers.split(",") if p.strip()]

    from tailorlm.config import Settings

    home = (args.home or Settings().home).resolve()
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="bench_server-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    model, folder, _ = llamacpp.store_model(args.model, home)
    lengths = prompt_lengths(folder)
    ggufs = {p: llamacpp.convert(model, home, p) for p in peers}

    info = machine()
    info["threads"] = str(args.threads)
    info["isa"] = args.isa
    info["llama_server"] = llamacpp.server_version(llamacpp.find_server(args.isa)) if peers else ""
    print(f"# {model} · {info['cpu']} · {args.threads} threads · {info['date']} · commit {info['commit']}")
    print(f"prompts: {min(lengths)}–{max(lengths)} tokens; {args.max_tokens} output tokens each (ignore_eos); "
          f"{'servers restarted per level, slots = concurrency' if args.slots_per_level else f'{max(args.levels)} slots'}; "
          f"{info['llama_server']}")

    servers: list[tuple[str, Callable[[int], Server]]] = []
    if not args.skip_ours:
        servers.append((OURS, ours_server(args, home, log_dir)))
    for p in peers:
        label = f"llama.cpp {p}"
        servers.append((label, peer_server(label, ggufs[p], model, args, max(lengths), log_dir)))
    results: dict[str, dict] = {}
    t0 = time.perf_counter()
    for label, make in servers:
        results[label] = measure(make, model, args.levels, args.rounds, args.min_requests, args.max_tokens,
                                 args.slots_per_level)
    total = time.perf_counter() - t0

    print(f"\n# Results ({model}, {args.threads} threads, {args.max_tokens} output tokens/request, "
          f"{info['date']}, commit {info['commit']}, total {total / 60:.1f} min)\n")
    print(f"machine: {json.dumps(info)}\n")
    print(table(results, args.levels))
    print()
    print(details(results, args.levels))
    if OURS in results:
        for p in peers:
            label = f"llama.cpp {p}"
            if "8" in results[OURS]["levels"] and "8" in results[label]["levels"]:
                mine = results[OURS]["levels"]["8"]["output_tps"]
                theirs = results[label]["levels"]["8"]["output_tps"]
                verdict = "meets" if mine >= theirs else "misses"
                note = " (q8_0 is lower precision than our fp32 weights)" if p != "f32" else " (same f32 weights)"
                print(f"\nbar, concurrency 8 output tok/s ≥ {label}{note}: {mine:.1f} vs {theirs:.1f} "
                      f"= {mine / theirs:.2f}× → {verdict} the bar")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "model": model, "threads": args.threads,
                                         "max_tokens": args.max_tokens, "slots_per_level": args.slots_per_level,
                                         "prompt_tokens": lengths, "ggufs": {k: str(v) for k, v in ggufs.items()},
                                         "results": results}, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
