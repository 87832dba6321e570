"""/v1/batches: the create request and the batch object (its list is a pagination.CursorPage)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Self

from pydantic import Field

from tailorlm.server.protocol.common import OpenAIRequest, OpenAIResponse
from tailorlm.server.protocol.responses import ResponseUsage

if TYPE_CHECKING:
    from tailorlm.batches import BatchRecord

Endpoint = Literal["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"]  # batches.ENDPOINTS


class CreateBatchRequest(OpenAIRequest):
    input_file_id: str
    endpoint: Endpoint
    completion_window: Literal["24h"]
    metadata: dict[str, str] | None = Field(None, max_length=16)


class BatchErrors(OpenAIResponse):
    object: Literal["list"] = "list"
    data: list[dict[str, Any]]


class RequestCounts(OpenAIResponse):
    total: int
    completed: int
    failed: int


class Batch(OpenAIResponse):
    # The spec types every timestamp and file id as present-or-absent, never null.
    omit_if_none = frozenset({"errors", "output_file_id", "error_file_id", "in_progress_at", "expires_at",
                              "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at",
                              "cancelled_at"})

    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str
    status: str
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts
    usage: ResponseUsage  # every answered line's tokens, summed
    metadata: dict[str, str] | None = None

    @classmethod
    def from_record(cls, b: BatchRecord) -> Self:
        return cls(id=b.id, endpoint=b.endpoint, errors=BatchErrors(data=b.errors) if b.errors else None,
                   input_file_id=b.input_file_id, completion_window=b.completion_window, status=b.status,
                   output_file_id=b.output_file_id, error_file_id=b.error_file_id, created_at=b.created_at,
                   expires_at=b.expires_at, **b.stamps,
                   request_counts=RequestCounts(total=b.total, completed=b.completed, failed=b.failed),
                   usage=ResponseUsage.of(**b.usage), metadata=b.metadata)
