"""POST /v1/completions (legacy text completions)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from tailorlm.server.protocol.common import FINGERPRINT, OpenAIRequest, OpenAIResponse, StreamOptions, Usage
from tailorlm.server.protocol.sampling import SamplingFields


class CompletionRequest(OpenAIRequest, SamplingFields):
    model: str
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=5)
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1)


class CompletionLogprobs(OpenAIResponse):
    text_offset: list[int]
    token_logprobs: list[float | None]
    tokens: list[str]
    top_logprobs: list[dict[str, float] | None]


class CompletionChoice(OpenAIResponse):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length", "content_filter"] | None


class Completion(OpenAIResponse):
    omit_if_none: ClassVar[frozenset[str]] = frozenset({"usage"})
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str = FINGERPRINT
    choices: list[CompletionChoice]
    usage: Usage | None = None
