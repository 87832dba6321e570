"""/v1/vector_stores: stores, their files and search, shaped as in OpenAI's spec."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from tailorlm.server.protocol.common import CursorListResponse, OpenAIRequest, OpenAIResponse

Attributes = dict[str, str | float | bool]


class CreateVectorStoreRequest(OpenAIRequest):
    name: str | None = None
    description: str | None = None
    file_ids: list[str] = Field(default_factory=list, max_length=500)
    metadata: dict[str, str] | None = Field(None, max_length=16)
    expires_after: dict[str, Any] | None = None  # accepted, not enforced: stores stay until deleted
    chunking_strategy: dict[str, Any] | None = None  # accepted; chunking is the knowledge base's own


class UpdateVectorStoreRequest(OpenAIRequest):
    name: str | None = None
    metadata: dict[str, str] | None = Field(None, max_length=16)
    expires_after: dict[str, Any] | None = None


class CreateVectorStoreFileRequest(OpenAIRequest):
    file_id: str
    attributes: Attributes | None = Field(None, max_length=16)
    chunking_strategy: dict[str, Any] | None = None


class RankingOptions(OpenAIRequest):
    ranker: Literal["none", "auto", "default-2024-11-15"] = "auto"
    score_threshold: float = Field(0, ge=0, le=1)


class VectorStoreSearchRequest(OpenAIRequest):
    query: str | list[str]
    rewrite_query: bool = False  # accepted and ignored: queries are searched as given
    max_num_results: int = Field(10, ge=1, le=50)
    filters: dict[str, Any] | None = None
    ranking_options: RankingOptions | None = None


class FileCounts(OpenAIResponse):
    in_progress: int
    completed: int
    failed: int
    cancelled: int
    total: int


class VectorStoreObject(OpenAIResponse):
    id: str
    object: Literal["vector_store"] = "vector_store"
    created_at: int
    name: str
    usage_bytes: int
    file_counts: FileCounts
    status: Literal["expired", "in_progress", "completed"]
    last_active_at: int | None
    metadata: dict[str, str] | None


class ListVectorStoresResponse(CursorListResponse[VectorStoreObject]):
    pass


class DeleteVectorStoreResponse(OpenAIResponse):
    id: str
    object: Literal["vector_store.deleted"] = "vector_store.deleted"
    deleted: bool


class LastError(OpenAIResponse):
    code: Literal["server_error", "unsupported_file", "invalid_file"]
    message: str


class VectorStoreFileObject(OpenAIResponse):
    omit_if_none: ClassVar[frozenset[str]] = frozenset({"attributes"})
    id: str
    object: Literal["vector_store.file"] = "vector_store.file"
    usage_bytes: int
    created_at: int
    vector_store_id: str
    status: Literal["in_progress", "completed", "cancelled", "failed"]
    last_error: LastError | None
    chunking_strategy: dict[str, Any] = Field(default_factory=lambda: {"type": "other"})
    attributes: Attributes | None = None


class ListVectorStoreFilesResponse(CursorListResponse[VectorStoreFileObject]):
    pass


class DeleteVectorStoreFileResponse(OpenAIResponse):
    id: str
    object: Literal["vector_store.file.deleted"] = "vector_store.file.deleted"
    deleted: bool


class SearchContent(OpenAIResponse):
    type: Literal["text"] = "text"
    text: str


class VectorStoreSearchResultItem(OpenAIResponse):
    file_id: str
    filename: str
    score: float
    attributes: Attributes | None
    content: list[SearchContent]


class VectorStoreSearchResultsPage(OpenAIResponse):
    object: Literal["vector_store.search_results.page"] = "vector_store.search_results.page"
    search_query: list[str]
    data: list[VectorStoreSearchResultItem]
    has_more: bool = False
    next_page: str | None = None
