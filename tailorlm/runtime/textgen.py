"""Text generation over the engine: prompt ids in, text deltas out, stop strings honoured.

`TextAssembler` turns engine events into text for one request; the sync `stream_text` (CLI) and
the server's async streams both use it, so every caller stops, counts and cancels alike.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from tailorlm.chat import TextStream, TextTokenizer
from tailorlm.chat.output import MessageDelta
from tailorlm.chat.plan import ChatOptions, ChatPlan, plan_chat
from tailorlm.engine import RequestHandle, SamplingParams, TokenEvent
from tailorlm.errors import TailorError
from tailorlm.runtime.model import OpenModel


@dataclass
class TextDelta:
    """New text from one generated token (may be empty while bytes or a stop prefix are held)."""

    text: str
    token_id: int | None


@dataclass
class Completion:
    """The outcome of one generation, filled as it streams."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    token_ids: list[int] = field(default_factory=list)
    first_token_seconds: float | None = None
    seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        decode = self.seconds - (self.first_token_seconds or 0.0)
        return (self.completion_tokens - 1) / decode if self.completion_tokens > 1 and decode > 0 else 0.0


class TextAssembler:
    """Engine events of one request → text deltas; says when a stop string means "cancel now"."""

    def __init__(self, tokenizer: TextTokenizer, prompt_ids: list[int], stops: Sequence[str] | None,
                 result: Completion | None = None) -> None:
        self.result = result if result is not None else Completion()
        self.result.prompt_tokens = len(prompt_ids)
        self.stream = TextStream(tokenizer, stops, prompt_ids=prompt_ids)
        self.start = time.perf_counter()

    @property
    def done(self) -> bool:
        return self.result.finish_reason is not None

    def feed(self, event: TokenEvent) -> TextDelta | None:
        """Take one event; returns the delta to show (or None). Check `done` afterwards."""
        res = self.result
        if event.finish_reason == "error":
            raise TailorError(f"generation failed: {event.error}")
        delta = None
        if event.token_id is not None:
            if res.first_token_seconds is None:
                res.first_token_seconds = time.perf_counter() - self.start
            res.completion_tokens += 1
            res.token_ids.append(event.token_id)
            if not event.is_stop_token:
                text, stopped = self.stream.push(event.token_id)
                res.text += text
                delta = TextDelta(text, event.token_id)
                if stopped:
                    res.finish_reason = "stop"
        if event.finish_reason is not None and res.finish_reason is None:
            res.finish_reason = event.finish_reason
        return delta

    def finish(self) -> TextDelta | None:
        """Flush what was held back (nothing once a stop string matched)."""
        self.result.seconds = time.perf_counter() - self.start
        tail = self.stream.flush()
        if self.stream.stopped:
            self.result.finish_reason = "stop"
        if not tail:
            return None
        self.result.text += tail
        return TextDelta(tail, None)


def chat_plan(model: OpenModel, messages: list[dict], options: ChatOptions | None = None) -> ChatPlan:
    """The plan of a chat on `model` (tailorlm/chat/plan.py): what the API would render for it, too."""
    return plan_chat(model.tokenizer, model.engine.loaded.model_type, messages, options)


def chat_prompt(model: OpenModel, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
    """The prompt ids of a chat, as planned for the API (NoChatTemplateError if the model has no template)."""
    return chat_plan(model, messages, ChatOptions(tools=tools)).prompt


def stream_text(model: OpenModel, prompt_ids: list[int], params: SamplingParams,
                stops: Sequence[str] | None = None, result: Completion | None = None) -> Iterator[TextDelta]:
    """Yield text deltas; `result` is completed when the iterator ends.

    Closing the iterator early (or Ctrl-C while iterating) cancels the request and frees its slot.
    """
    return (d for d in _stream(model, prompt_ids, params, stops, result) if d.text)


def stream_chat(model: OpenModel, messages: list[dict], params: SamplingParams, stops: Sequence[str] | None = None,
                result: Completion | None = None, options: ChatOptions | None = None) -> Iterator[MessageDelta]:
    """A chat's answer as message deltas (content, reasoning, tool calls), planned and parsed as the API
    does; `result` holds the raw completion when the iterator ends."""
    plan = chat_plan(model, messages, options)
    params = dataclasses.replace(params, stop_token_ids=[*params.stop_token_ids, *plan.stop_token_ids],
                                 constraint=plan.constraint())
    parser = plan.parser()
    for delta in _stream(model, plan.prompt, params, stops, result):
        yield from parser.feed(delta.text, delta.token_id)
    yield from parser.finish()


def _stream(model: OpenModel, prompt_ids: list[int], params: SamplingParams, stops: Sequence[str] | None,
            result: Completion | None) -> Iterator[TextDelta]:
    assembler = TextAssembler(model.tokenizer, prompt_ids, stops, result)
    handle = model.submit(prompt_ids, params)
    try:
        yield from _drain(handle, assembler)
    finally:
        handle.cancel()
        assembler.result.seconds = time.perf_counter() - assembler.start  # also when closed early


def complete_all(model: OpenModel, prompts: Sequence[list[int]], params: SamplingParams | Sequence[SamplingParams],
                 stops: Sequence[str] | None = None,
                 on_done: Callable[[Completion], None] | None = None) -> list[Completion]:
    """Generate for every prompt at once, so the engine batches them; completions in prompt order.

    `params` is one for all prompts or one per prompt; `on_done` is called as each completion is collected.
    """
    per_prompt = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
    runs: list[tuple[RequestHandle, TextAssembler]] = []
    try:
        for prompt, p in zip(prompts, per_prompt, strict=True):
            runs.append((model.submit(prompt, p), TextAssembler(model.tokenizer, prompt, stops)))
        for handle, assembler in runs:
            for _ in _drain(handle, assembler):
                pass
            if on_done is not None:
                on_done(assembler.result)
    finally:
        for handle, _ in runs:
            handle.cancel()
    return [assembler.result for _, assembler in runs]


def _drain(handle: RequestHandle, assembler: TextAssembler) -> Iterator[TextDelta]:
    """Feed one request's events to its assembler until it is done; every delta (a special token's is empty)."""
    for event in handle:
        delta = assembler.feed(event)
        if delta is not None:
            yield delta
        if assembler.done:
            break
    tail = assembler.finish()
    if tail is not None:
        yield tail
