"""Text generation over the engine: prompt ids in, text deltas out, stop strings honoured.

The same function serves the CLI and (later) the server, so both stop, count and cancel alike.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from tailorlm.chat import TextStream, render_chat
from tailorlm.engine import SamplingParams
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


def chat_prompt(model: OpenModel, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
    """Render messages with the model's own chat template (NoChatTemplateError if it has none)."""
    return render_chat(model.tokenizer, messages, add_generation_prompt=True, tools=tools)


def stream_text(model: OpenModel, prompt_ids: list[int], params: SamplingParams,
                stops: Sequence[str] | None = None, result: Completion | None = None) -> Iterator[TextDelta]:
    """Yield text deltas; `result` is completed when the iterator ends.

    Closing the iterator early (or Ctrl-C while iterating) cancels the request and frees its slot.
    """
    result = result if result is not None else Completion()
    result.prompt_tokens = len(prompt_ids)
    stream = TextStream(model.tokenizer, stops, prompt_ids=prompt_ids)
    start = time.perf_counter()
    handle = model.engine.submit(prompt_ids, params)
    try:
        for event in handle:
            if event.finish_reason == "error":
                raise TailorError(f"generation failed: {event.error}")
            if event.token_id is not None:
                if result.first_token_seconds is None:
                    result.first_token_seconds = time.perf_counter() - start
                result.completion_tokens += 1
                result.token_ids.append(event.token_id)
                if not event.is_stop_token:
                    text, stopped = stream.push(event.token_id)
                    if text:
                        result.text += text
                        yield TextDelta(text, event.token_id)
                    if stopped:
                        handle.cancel()
                        result.finish_reason = "stop"
                        break
            if event.finish_reason is not None:
                result.finish_reason = event.finish_reason
        tail = stream.flush()  # "" once a stop string matched
        if tail:
            result.text += tail
            yield TextDelta(tail, None)
        if stream.stopped:
            result.finish_reason = "stop"
    finally:
        handle.cancel()
        result.seconds = time.perf_counter() - start
