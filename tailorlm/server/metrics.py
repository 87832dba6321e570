"""Prometheus metrics: requests, tokens, latency histograms, and live engine gauges at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class _EngineGauges:
    """Reads queue depth, running batch size and loaded models from the registry when scraped."""

    def __init__(self, snapshot: Callable[[], dict[str, dict[str, int]]]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterable[GaugeMetricFamily]:
        stats = self.snapshot()
        queue = GaugeMetricFamily("tailor_queue_depth", "Requests waiting for a slot", labels=["model"])
        batch = GaugeMetricFamily("tailor_running_batch_size", "Requests in the running batch", labels=["model"])
        for name, s in stats.items():
            queue.add_metric([name], s["waiting"])
            batch.add_metric([name], s["running"])
        loaded = GaugeMetricFamily("tailor_loaded_models", "Models loaded in memory")
        loaded.add_metric([], len(stats))
        return [queue, batch, loaded]


class Metrics:
    def __init__(self, snapshot: Callable[[], dict[str, dict[str, int]]]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("tailor_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.prompt_tokens = Counter("tailor_prompt_tokens", "Prompt tokens processed", ["model"], registry=r)
        self.completion_tokens = Counter("tailor_completion_tokens", "Tokens generated", ["model"], registry=r)
        self.ttft = Histogram("tailor_time_to_first_token_seconds", "Time to first token", ["model"],
                              buckets=LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram("tailor_time_per_output_token_seconds", "Time between output tokens", ["model"],
                              buckets=LATENCY_BUCKETS, registry=r)
        r.register(_EngineGauges(snapshot))

    def observe_generation(self, model: str, prompt_tokens: int, completion_tokens: int,
                           ttft: float | None, seconds: float) -> None:
        self.prompt_tokens.labels(model).inc(prompt_tokens)
        self.completion_tokens.labels(model).inc(completion_tokens)
        if ttft is not None:
            self.ttft.labels(model).observe(ttft)
            if completion_tokens > 1:
                self.tpot.labels(model).observe((seconds - ttft) / (completion_tokens - 1))

    def render(self) -> bytes:
        return generate_latest(self.registry)
