"""/v1/vector_stores: stores, their files and search, shaped as in OpenAI's spec."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self

from pydantic import Field, field_validator

from tailorlm.server.protocol.common import Deletion, OpenAIRequest, OpenAIResponse

if TYPE_CHECKING:  # records of tailorlm.kb, imported only when a store is used
    from tailorlm.kb import Hit, KbFile, KnowledgeBase
    from tailorlm.kb.batches import FileBatch
    from tailorlm.server.knowledge import PendingFile

Attributes = dict[str, str | float | bool]
FileStatus = Literal["in_progress", "completed", "failed", "cancelled"]


class ExpiresAfter(OpenAIRequest):
    anchor: Literal["last_active_at"]
    days: int = Field(ge=1, le=365)


class StaticChunking(OpenAIRequest):
    max_chunk_size_tokens: int = Field(ge=100, le=4096)
    chunk_overlap_tokens: int = Field(ge=0)


class ChunkingStrategy(OpenAIRequest):
    """OpenAI's `auto` (the knowledge base's own chunking) or `static` (sizes in the embedding model's tokens)."""

    type: Literal["auto", "static"]
    static: StaticChunking | None = None

    def sizes(self) -> tuple[int, int] | None:
        """(max tokens, overlap) for `static`; None for `auto`."""
        if self.type == "auto":
            return None
        if self.static is None:
            from tailorlm.errors import InvalidRequestError

            raise InvalidRequestError("a static chunking_strategy needs its `static` object.",
                                      param="chunking_strategy")
        return self.static.max_chunk_size_tokens, self.static.chunk_overlap_tokens


class CreateVectorStoreRequest(OpenAIRequest):
    name: str | None = None
    description: str | None = None
    file_ids: list[str] = Field(default_factory=list, max_length=500)
    metadata: dict[str, str] | None = Field(None, max_length=16)
    expires_after: ExpiresAfter | None = None
    chunking_strategy: ChunkingStrategy | None = None  # for `file_ids`


class UpdateVectorStoreRequest(OpenAIRequest):
    name: str | None = None
    metadata: dict[str, str] | None = Field(None, max_length=16)
    expires_after: ExpiresAfter | None = None


class CreateVectorStoreFileRequest(OpenAIRequest):
    file_id: str
    attributes: Attributes | None = Field(None, max_length=16)
    chunking_strategy: ChunkingStrategy | None = None


class CreateVectorStoreFileBatchRequest(OpenAIRequest):
    """`file_ids` (with shared attributes and chunking) or `files` (each with its own), not both."""

    file_ids: list[str] | None = Field(None, min_length=1, max_length=2000)
    files: list[CreateVectorStoreFileRequest] | None = Field(None, min_length=1, max_length=2000)
    attributes: Attributes | None = Field(None, max_length=16)
    chunking_strategy: ChunkingStrategy | None = None

    def entries(self) -> list[CreateVectorStoreFileRequest]:
        if (self.file_ids is None) == (self.files is None):
            from tailorlm.errors import InvalidRequestError

            raise InvalidRequestError("give either file_ids or files, not both and not neither.", param="file_ids")
        if self.files is not None:
            return list(self.files)
        return [CreateVectorStoreFileRequest(file_id=f, attributes=self.attributes,
                                             chunking_strategy=self.chunking_strategy) for f in self.file_ids or []]


class RankingOptions(OpenAIRequest):
    ranker: Literal["none", "auto", "default-2024-11-15"] = "auto"
    score_threshold: float = Field(0, ge=0, le=1)


MAX_QUERIES = 16  # one search embeds every query: a bounded list, refused beyond with a clear error
MAX_QUERY_CHARS = 8_000


class VectorStoreSearchRequest(OpenAIRequest):
    query: str | list[str]
    rewrite_query: bool = False  # accepted and ignored: queries are searched as given
    max_num_results: int = Field(10, ge=1, le=50)
    filters: dict[str, Any] | None = None
    ranking_options: RankingOptions | None = None

    @field_validator("query")
    @classmethod
    def _bounded(cls, query: str | list[str]) -> str | list[str]:
        queries = [query] if isinstance(query, str) else query
        if not queries or len(queries) > MAX_QUERIES:
            raise ValueError(f"give between 1 and {MAX_QUERIES} queries (got {len(queries)})")
        if any(len(q) > MAX_QUERY_CHARS for q in queries):
            raise ValueError(f"a query may have at most {MAX_QUERY_CHARS:,} characters")
        return query


class FileCounts(OpenAIResponse):
    in_progress: int
    completed: int
    failed: int
    cancelled: int
    total: int

    @classmethod
    def of(cls, files: Sequence[VectorStoreFileObject], total: int | None = None) -> Self:
        """The files by status; `total` defaults to how many they are."""
        counts = {s: sum(f.status == s for f in files) for s in ("in_progress", "completed", "failed", "cancelled")}
        return cls(**counts, total=len(files) if total is None else total)


class VectorStoreObject(OpenAIResponse):
    omit_if_none: ClassVar[frozenset[str]] = frozenset({"expires_after"})
    id: str
    object: Literal["vector_store"] = "vector_store"
    created_at: int
    name: str
    usage_bytes: int
    file_counts: FileCounts
    status: Literal["expired", "in_progress", "completed"]
    last_active_at: int | None
    metadata: dict[str, str] | None
    expires_after: dict[str, Any] | None = None
    expires_at: int | None = None

    @classmethod
    def from_record(cls, kb: KnowledgeBase, files: Sequence[VectorStoreFileObject]) -> Self:
        """A knowledge base as a store, its status and counts from its `files` as they are now."""
        counts = FileCounts.of(files)
        status = "expired" if kb.expired else "in_progress" if counts.in_progress else "completed"
        return cls(id=kb.id, created_at=kb.created_at, name=kb.name, usage_bytes=int(kb.bytes or 0),
                   file_counts=counts, status=status, last_active_at=kb.last_active_at or kb.created_at,
                   metadata=kb.metadata or {}, expires_after=kb.expires_after, expires_at=kb.expires_at)


class DeleteVectorStoreResponse(Deletion):
    object: Literal["vector_store.deleted"] = "vector_store.deleted"


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
    status: FileStatus
    last_error: LastError | None
    chunking_strategy: dict[str, Any]
    attributes: Attributes | None = None

    @classmethod
    def from_record(cls, f: KbFile | PendingFile, chunking: tuple[int, int]) -> Self:
        """A knowledge base's file, or one still being ingested; `chunking` (max tokens, overlap) is the
        knowledge base's own, for a file that has none of its own."""
        error = None
        if f.status == "failed":
            error = LastError(code="invalid_file", message=f.error or "the file could not be ingested")
        size, overlap = f.chunking or chunking
        strategy = {"type": "static", "static": {"max_chunk_size_tokens": size, "chunk_overlap_tokens": overlap}}
        return cls(id=f.id, usage_bytes=f.bytes, created_at=f.created_at, vector_store_id=f.kb_id,
                   status=f.status, last_error=error, chunking_strategy=strategy, attributes=f.attributes or None)


class DeleteVectorStoreFileResponse(Deletion):
    object: Literal["vector_store.file.deleted"] = "vector_store.file.deleted"


class VectorStoreFileBatchObject(OpenAIResponse):
    id: str
    object: Literal["vector_store.files_batch"] = "vector_store.files_batch"
    created_at: int
    vector_store_id: str
    status: FileStatus
    file_counts: FileCounts

    @classmethod
    def from_record(cls, batch: FileBatch, files: Sequence[VectorStoreFileObject]) -> Self:
        """A batch, its status and counts from its `files` as they are now."""
        counts = FileCounts.of(files, total=len(batch.file_ids))
        if counts.in_progress:
            status = "in_progress"
        elif batch.cancelled:
            status = "cancelled"
        elif counts.failed and not counts.completed:
            status = "failed"
        else:
            status = "completed"
        return cls(id=batch.id, created_at=batch.created_at, vector_store_id=batch.kb_id, status=status,
                   file_counts=counts)


class SearchContent(OpenAIResponse):
    type: Literal["text"] = "text"
    text: str


class VectorStoreSearchResultItem(OpenAIResponse):
    file_id: str
    filename: str
    score: float
    attributes: Attributes | None
    content: list[SearchContent]

    @classmethod
    def from_record(cls, hit: Hit) -> Self:
        score = min(max(float(hit.score), 0.0), 1.0)  # the spec's range
        return cls(file_id=hit.file_id, filename=hit.filename, score=score, attributes=hit.attributes or None,
                   content=[SearchContent(text=hit.text)])


class VectorStoreFileContentResponse(OpenAIResponse):
    object: Literal["vector_store.file_content.page"] = "vector_store.file_content.page"
    data: list[SearchContent]
    has_more: bool = False
    next_page: str | None = None


class VectorStoreSearchResultsPage(OpenAIResponse):
    object: Literal["vector_store.search_results.page"] = "vector_store.search_results.page"
    search_query: list[str]
    data: list[VectorStoreSearchResultItem]
    has_more: bool = False
    next_page: str | None = None
