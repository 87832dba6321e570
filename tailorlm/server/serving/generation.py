"""Shared by chat and text completions: run n choices, stream or collect, cancel on disconnect."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from fastapi import Request

from tailorlm.engine import SamplingParams, TokenEvent
from tailorlm.errors import InvalidRequestError
from tailorlm.runtime import Completion, OpenModel, TextAssembler, TextDelta
from tailorlm.server.aio import AsyncRequest
from tailorlm.server.metrics import Metrics


@dataclass
class ChoiceRun:
    """One choice in flight: its engine request and its text assembly."""

    index: int
    request: AsyncRequest
    assembler: TextAssembler
    events: list[TokenEvent] = field(default_factory=list)  # token events, for logprobs

    @property
    def result(self) -> Completion:
        return self.assembler.result


def check_prompt(model: OpenModel, prompt: list[int], limit: int) -> None:
    if limit and len(prompt) > limit:
        raise InvalidRequestError(
            f"The prompt has {len(prompt)} tokens; this server accepts at most {limit}.", param="messages"
        )


def start_choices(model: OpenModel, prompt: list[int], params: list[SamplingParams],
                  stops: list[str]) -> list[ChoiceRun]:
    """Submit every choice now, so that bad parameters fail before a response starts."""
    runs: list[ChoiceRun] = []
    try:
        for i, p in enumerate(params):
            runs.append(ChoiceRun(i, AsyncRequest(model, prompt, p),
                                  TextAssembler(model.tokenizer, prompt, stops)))
    except Exception:
        for run in runs:
            run.request.cancel()
        raise
    return runs


async def run_choice(run: ChoiceRun, on_delta: Callable[[ChoiceRun, TextDelta], None] | None = None) -> None:
    """Drive one choice to its end; a stop string cancels the engine request at once."""
    async for event in run.request.events():
        if event.token_id is not None:
            run.events.append(event)
        delta = run.assembler.feed(event)
        if delta is not None and on_delta is not None:
            on_delta(run, delta)
        if run.assembler.done:
            run.request.cancel()
            break
    tail = run.assembler.finish()
    if tail is not None and on_delta is not None:
        on_delta(run, tail)


async def collect(runs: list[ChoiceRun], http: Request | None,
                  on_delta: Callable[[ChoiceRun, TextDelta], None] | None = None) -> None:
    """Run all choices; if the client goes away first, cancel them (freeing their slots). Without an HTTP
    request (a batch line) nothing is watched: cancelling the caller's task cancels the choices."""
    work = asyncio.gather(*(run_choice(r, on_delta) for r in runs))

    async def watch() -> None:
        while http is not None and not work.done():
            if await http.is_disconnected():
                for r in runs:
                    r.request.cancel()
                work.cancel()
                return
            await asyncio.sleep(0.1)

    watcher = asyncio.create_task(watch())
    try:
        await work
    finally:
        watcher.cancel()
        for r in runs:
            r.request.cancel()


async def merged_deltas(runs: list[ChoiceRun]) -> AsyncIterator[tuple[ChoiceRun, TextDelta | None]]:
    """Deltas of all choices as they come; (run, None) marks the end of a choice."""
    queue: asyncio.Queue[tuple[ChoiceRun, TextDelta | None] | BaseException] = asyncio.Queue()

    async def drive(run: ChoiceRun) -> None:
        try:
            await run_choice(run, lambda r, d: queue.put_nowait((r, d)))
            queue.put_nowait((run, None))
        except BaseException as exc:  # surfaced to the consumer below
            queue.put_nowait(exc)

    tasks = [asyncio.create_task(drive(r)) for r in runs]
    try:
        remaining = len(runs)
        while remaining:
            item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            if item[1] is None:
                remaining -= 1
            yield item
    finally:
        for t in tasks:
            t.cancel()
        for r in runs:
            r.request.cancel()


def sse(payload: dict | str, event: str | None = None) -> str:
    """One server-sent event; `event` names it (Responses streams do, chat's do not)."""
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return (f"event: {event}\n" if event else "") + f"data: {data}\n\n"


def record(metrics: Metrics, model: str, runs: list[ChoiceRun]) -> None:
    for r in runs:
        res = r.result
        metrics.observe_generation(model, res.prompt_tokens, res.completion_tokens, res.first_token_seconds, res.seconds)


def finish_reason(result: Completion) -> str:
    """Engine reasons → OpenAI's: abort (client gone, shutdown) reads as "stop"."""
    return "length" if result.finish_reason == "length" else "stop"


def usage(runs: list[ChoiceRun]) -> dict[str, int]:
    prompt = runs[0].result.prompt_tokens if runs else 0
    completion = sum(r.result.completion_tokens for r in runs)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
