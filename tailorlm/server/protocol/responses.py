"""/v1/responses: the request, the response object, its usage and the deletion receipt.

Items (input and output) stay JSON objects: they are many shapes, built and read in serving/response_items.py.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from tailorlm.server.protocol.common import OpenAIRequest, OpenAIResponse


class CreateResponseRequest(OpenAIRequest):
    model: str
    input: str | list[dict[str, Any]] = Field(default_factory=list)
    instructions: str | None = None
    previous_response_id: str | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_output_tokens: int | None = Field(None, ge=1)
    text: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    reasoning: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = True
    stream: bool | None = False
    include: list[str] | None = None
    background: bool | None = None
    truncation: Literal["auto", "disabled"] | None = None
    user: str | None = None


class InputTokensDetails(OpenAIResponse):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(OpenAIResponse):
    reasoning_tokens: int = 0


class ResponseUsage(OpenAIResponse):
    """Tokens in OpenAI's newer shape (input/output), as the response object and the batch object count them."""

    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int

    @classmethod
    def of(cls, inputs: int, outputs: int, cached: int = 0, reasoning: int = 0) -> "ResponseUsage":
        return cls(input_tokens=inputs, input_tokens_details=InputTokensDetails(cached_tokens=cached),
                   output_tokens=outputs, output_tokens_details=OutputTokensDetails(reasoning_tokens=reasoning),
                   total_tokens=inputs + outputs)


class IncompleteDetails(OpenAIResponse):
    reason: Literal["max_output_tokens", "content_filter"]


class ResponseObject(OpenAIResponse):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["completed", "incomplete", "in_progress", "failed", "cancelled", "queued"]
    background: bool = False
    completed_at: int | None = None
    error: dict[str, Any] | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None
    max_output_tokens: int | None
    model: str
    output: list[dict[str, Any]]
    parallel_tool_calls: bool
    previous_response_id: str | None
    reasoning: dict[str, Any] | None
    store: bool
    temperature: float
    top_p: float
    text: dict[str, Any]
    tool_choice: str | dict[str, Any]
    tools: list[dict[str, Any]]
    truncation: Literal["auto", "disabled"] = "disabled"
    usage: ResponseUsage | None
    metadata: dict[str, str]
    sources: list[dict[str, Any]] | None = None  # extension: what a preset's knowledge bases gave (docs/api.md)
    omit_if_none: ClassVar[frozenset[str]] = frozenset({"sources", "usage"})  # usage: none until it ends


class ResponseDeleted(OpenAIResponse):
    id: str
    object: Literal["response"] = "response"
    deleted: bool = True
