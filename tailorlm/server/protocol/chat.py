"""POST /v1/chat/completions: request, response and stream chunk."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from tailorlm.server.protocol.common import FINGERPRINT, OpenAIRequest, OpenAIResponse, StreamOptions, Usage
from tailorlm.server.protocol.sampling import SamplingFields


class ChatCompletionRequest(OpenAIRequest, SamplingFields):
    model: str
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = None


class TopLogprob(OpenAIResponse):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(OpenAIResponse):
    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None


class FunctionCall(OpenAIResponse):
    name: str
    arguments: str


class ToolCall(OpenAIResponse):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(OpenAIResponse):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None
    reasoning_content: str | None = None  # extension (as vLLM): a reasoning model's analysis
    omit_if_none: ClassVar[frozenset[str]] = frozenset({"tool_calls", "reasoning_content"})


class ChatChoice(OpenAIResponse):
    index: int
    message: ChatMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length", "tool_calls", "content_filter"]


class ChatCompletion(OpenAIResponse):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str = FINGERPRINT
    choices: list[ChatChoice]
    usage: Usage
    sources: list[dict[str, Any]] | None = None  # extension: what a preset's knowledge bases gave (docs/api.md)
    omit_if_none: ClassVar[frozenset[str]] = frozenset({"sources"})


class FunctionCallDelta(OpenAIResponse):
    omit_if_none: ClassVar[frozenset[str]] = frozenset({"name", "arguments"})
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(OpenAIResponse):
    omit_if_none: ClassVar[frozenset[str]] = frozenset({"id", "type", "function"})
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta | None = None


class ChatDelta(OpenAIResponse):
    omit_if_none: ClassVar[frozenset[str]] = frozenset({"role", "content", "tool_calls", "reasoning_content"})
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None
    reasoning_content: str | None = None


class ChatChunkChoice(OpenAIResponse):
    index: int
    delta: ChatDelta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length", "tool_calls", "content_filter"] | None = None


class ChatCompletionChunk(OpenAIResponse):
    omit_if_none: ClassVar[frozenset[str]] = frozenset({"usage", "sources"})
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str = FINGERPRINT
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    sources: list[dict[str, Any]] | None = None  # extension: a preset's sources, on the first chunk only
