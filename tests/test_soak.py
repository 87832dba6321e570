"""Soak: many concurrent streams over one engine, base, adapter and preset mixed, some clients leaving mid-stream.

Afterwards nothing is left behind: no request running or waiting (read from /metrics, as an operator would), no
request known to the scheduler, every slot free; the process's memory is bounded by what the first wave took.
"""

from __future__ import annotations

import asyncio
import json
import re
import resource
from pathlib import Path

import httpx

from tailorlm.config import Settings
from tailorlm.presets import Preset
from tailorlm.presets.checks import create_preset
from tests.server_harness import live_server
from tests.test_lora_serving import ADAPTERS
from tests.tiny import make_tiny_adapter, make_tiny_model, save_tiny_tokenizer

STREAMS, WAVES = 32, 3
MODELS = ("tiny", "ft:tiny:a:ftjob-a", "tuned")


def _home(tmp_path: Path) -> Settings:
    from tailorlm.store import AdapterStore, ModelStore

    base = save_tiny_tokenizer(make_tiny_model("llama", tmp_path / "base"))
    home = tmp_path / "home"
    ModelStore(home).import_path(base, name="tiny", show_progress=False)
    AdapterStore(home).add("ft:tiny:a:ftjob-a", "tiny",
                           make_tiny_adapter(base, tmp_path / "a", seed=1, **ADAPTERS["llama"][0]))
    settings = Settings(home=home, threads=2, default_model="tiny", preload=False, max_batch=16, max_queue=64)
    create_preset(settings, Preset(name="tuned", model="tiny", adapter="ft:tiny:a:ftjob-a", system="Be brief."))
    return settings


async def _stream(client: httpx.AsyncClient, i: int) -> str:
    """One streamed chat; every third client leaves after a few chunks."""
    body = {"model": MODELS[i % 3], "messages": [{"role": "user", "content": f"Tell me about seed {i}."}],
            "max_tokens": 48, "temperature": 0.7, "seed": i, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    chunks, tokens = 0, 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as res:
        if res.status_code != 200:
            return f"status {res.status_code}: {await res.aread()!r}"
        async for line in res.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks += 1
                if '"error"' in line:
                    return f"error chunk: {line}"
                if '"completion_tokens"' in line:
                    tokens = json.loads(line[6:])["usage"]["completion_tokens"]
            if i % 3 == 2 and chunks >= 4:
                return "left"  # closing the stream mid-answer, as a client that goes away
    return "done" if tokens == 48 else f"short: {tokens} tokens"


def _gauges(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{name}\{{[^}}]*\}} (\S+)$", text, re.M))


def test_32_mixed_streams_with_disconnects_leave_nothing_behind(tmp_path: Path) -> None:
    with live_server(_home(tmp_path)) as live:
        async def wave() -> list[str]:
            async with httpx.AsyncClient(base_url=live.url, timeout=120) as client:
                return await asyncio.gather(*(_stream(client, i) for i in range(STREAMS)))

        peaks = []
        for _ in range(WAVES):
            outcomes = asyncio.run(wave())
            assert sorted(set(outcomes)) == ["done", "left"], outcomes
            peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        registry = live.app.state.tailor.registry
        engine = registry._loaded["tiny"].engine
        for _ in range(100):  # the last aborts reach the engine thread between steps
            if not engine.core.by_id:
                break
            asyncio.run(asyncio.sleep(0.05))
        with httpx.Client(base_url=live.url) as http:
            metrics = http.get("/metrics").text
        assert _gauges(metrics, "tailor_running_batch_size") == 0 and _gauges(metrics, "tailor_queue_depth") == 0
        assert not engine.core.by_id and not engine.core.running and not engine.core.waiting
        assert engine.core.prefilling is None
        # memory: later waves reuse what the first grew (cache slots, buffers); 64 MiB of slack for allocator noise
        assert peaks[-1] - peaks[0] < 64 * 1024, peaks
