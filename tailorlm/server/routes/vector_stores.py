"""/v1/vector_stores: OpenAI's vector stores API over tailorlm's knowledge bases (tailorlm.kb).

A vector store is a knowledge base; its files are uploaded files (/v1/files) ingested in the background.
Handlers are plain functions, so FastAPI runs them (and the knowledge base's disk work) off the event loop.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query

from tailorlm.errors import NotFoundError
from tailorlm.server.knowledge import Knowledge, PendingFile
from tailorlm.server.protocol.pagination import CursorPage, Order, PageQuery, page
from tailorlm.server.protocol.vector_stores import (
    ChunkingStrategy,
    CreateVectorStoreFileBatchRequest,
    CreateVectorStoreFileRequest,
    CreateVectorStoreRequest,
    DeleteVectorStoreFileResponse,
    DeleteVectorStoreResponse,
    FileCounts,
    LastError,
    SearchContent,
    UpdateVectorStoreRequest,
    VectorStoreFileBatchObject,
    VectorStoreFileContentResponse,
    VectorStoreFileObject,
    VectorStoreObject,
    VectorStoreSearchRequest,
    VectorStoreSearchResultItem,
    VectorStoreSearchResultsPage,
)
from tailorlm.server.state import ServerState, get_state

router = APIRouter()


def _knowledge(state: ServerState = Depends(get_state)) -> Knowledge:
    return state.knowledge


def _file_object(kn: Knowledge, f: Any) -> VectorStoreFileObject:
    """A KbFile or a PendingFile as OpenAI's vector store file."""
    error = None
    if f.status == "failed":
        error = LastError(code="invalid_file", message=f.error or "the file could not be ingested")
    size, overlap = f.chunking or (kn.kbs.chunk_tokens, kn.kbs.overlap)
    chunking = {"type": "static", "static": {"max_chunk_size_tokens": size, "chunk_overlap_tokens": overlap}}
    return VectorStoreFileObject(id=f.id, usage_bytes=f.bytes, created_at=f.created_at,
                                 vector_store_id=f.kb_id, status=f.status, last_error=error,
                                 chunking_strategy=chunking, attributes=f.attributes or None)


def _chunking(kn: Knowledge, kb_id: str | None, strategy: ChunkingStrategy | None) -> tuple[int, int] | None:
    """A request's chunking as (max tokens, overlap), checked against the embedding model now (a 400, not a
    file that fails later)."""
    sizes = strategy.sizes() if strategy is not None else None
    if sizes is not None:
        kn.kbs.check_chunking(kb_id, sizes)
    return sizes


def _files(kn: Knowledge, kb_id: str) -> list[VectorStoreFileObject]:
    """The files of a store: the knowledge base's records, and those still being ingested (or failed early)."""
    done = {f.id: _file_object(kn, f) for f in kn.kbs.files(kb_id)}
    pending = [_file_object(kn, p) for p in kn.pending_for(kb_id) if p.id not in done or p.status == "in_progress"]
    merged = {**done, **{p.id: p for p in pending}}
    return sorted(merged.values(), key=lambda f: f.created_at)


def _counts(files: list[VectorStoreFileObject]) -> dict[str, int]:
    return {s: sum(f.status == s for f in files) for s in ("in_progress", "completed", "failed", "cancelled")}


def _store_object(kn: Knowledge, kb: Any) -> VectorStoreObject:
    files = _files(kn, kb.id)
    counts = _counts(files)
    status = "expired" if kb.expired else "in_progress" if counts["in_progress"] else "completed"
    return VectorStoreObject(
        id=kb.id, created_at=kb.created_at, name=kb.name, usage_bytes=int(kb.bytes or 0),
        file_counts=FileCounts(**counts, total=len(files)), status=status,
        last_active_at=kb.last_active_at or kb.created_at, metadata=kb.metadata or {},
        expires_after=kb.expires_after, expires_at=kb.expires_at,
    )


@router.post("/v1/vector_stores")
def create_store(body: CreateVectorStoreRequest, kn: Knowledge = Depends(_knowledge)) -> dict:
    for file_id in body.file_ids:
        kn.files.get(file_id)  # every file exists, or nothing is created
    name = body.name or f"store-{datetime.now().strftime('%Y%m%d-%H%M%S-%f')}"
    sizes = _chunking(kn, None, body.chunking_strategy)  # before the store exists: a bad request creates nothing
    expiry = body.expires_after.model_dump() if body.expires_after else None
    kb = kn.kbs.create(name, metadata=body.metadata, expires_after=expiry)
    for file_id in body.file_ids:
        kn.add_file(kb.id, file_id, None, sizes)
    return _store_object(kn, kb).model_dump(mode="json")


@router.get("/v1/vector_stores")
def list_stores(
    limit: int = Query(20, ge=1, le=100),
    order: Order = "desc",
    after: str | None = None,
    before: str | None = None,
    kn: Knowledge = Depends(_knowledge),
) -> dict:
    stores = kn.kbs.list()  # oldest first
    window, more = page(stores, PageQuery(limit, order, after, before))
    return CursorPage.build([_store_object(kn, kb) for kb in window], more).model_dump(mode="json")


@router.get("/v1/vector_stores/{store_id}")
def retrieve_store(store_id: str, kn: Knowledge = Depends(_knowledge)) -> dict:
    return _store_object(kn, kn.kbs.get(store_id)).model_dump(mode="json")


@router.post("/v1/vector_stores/{store_id}")
def update_store(store_id: str, body: UpdateVectorStoreRequest, kn: Knowledge = Depends(_knowledge)) -> dict:
    kb = kn.kbs.update(store_id, name=body.name, metadata=body.metadata,
                       expires_after=body.expires_after.model_dump() if body.expires_after else None)
    return _store_object(kn, kb).model_dump(mode="json")


@router.delete("/v1/vector_stores/{store_id}")
def delete_store(store_id: str, kn: Knowledge = Depends(_knowledge)) -> dict:
    kb = kn.kbs.get(store_id)
    kn.kbs.remove(kb.id)
    kn.forget(kb.id)
    return DeleteVectorStoreResponse(id=kb.id, deleted=True).model_dump(mode="json")


@router.post("/v1/vector_stores/{store_id}/files")
def add_file(store_id: str, body: CreateVectorStoreFileRequest, kn: Knowledge = Depends(_knowledge)) -> dict:
    kb = kn.kbs.usable(store_id)
    pending: PendingFile = kn.add_file(kb.id, body.file_id, body.attributes, _chunking(kn, kb.id, body.chunking_strategy))
    return _file_object(kn, pending).model_dump(mode="json")


class FilePage:
    """The query of a file list: OpenAI's cursor pagination plus `filter` on status."""

    def __init__(
        self,
        limit: int = Query(20, ge=1, le=100),
        order: Order = "desc",
        after: str | None = None,
        before: str | None = None,
        filter: Literal["in_progress", "completed", "failed", "cancelled"] | None = None,  # noqa: A002 (OpenAI's)
    ) -> None:
        self.limit, self.order, self.after, self.before, self.status = limit, order, after, before, filter

    def of(self, files: list[VectorStoreFileObject]) -> dict:
        if self.status is not None:
            files = [f for f in files if f.status == self.status]
        window, more = page(files, PageQuery(self.limit, self.order, self.after, self.before))
        return CursorPage.build(window, more).model_dump(mode="json")


@router.get("/v1/vector_stores/{store_id}/files")
def list_files(store_id: str, query: FilePage = Depends(), kn: Knowledge = Depends(_knowledge)) -> dict:
    return query.of(_files(kn, kn.kbs.get(store_id).id))


def _find_file(kn: Knowledge, store_id: str, file_id: str) -> VectorStoreFileObject:
    kb = kn.kbs.get(store_id)
    for f in _files(kn, kb.id):
        if f.id == file_id:
            return f
    raise NotFoundError(f"No file {file_id} in vector store {kb.id}", param="file_id")


@router.get("/v1/vector_stores/{store_id}/files/{file_id}")
def retrieve_file(store_id: str, file_id: str, kn: Knowledge = Depends(_knowledge)) -> dict:
    return _find_file(kn, store_id, file_id).model_dump(mode="json")


@router.delete("/v1/vector_stores/{store_id}/files/{file_id}")
def delete_file(store_id: str, file_id: str, kn: Knowledge = Depends(_knowledge)) -> dict:
    found = _find_file(kn, store_id, file_id)
    kn.forget(found.vector_store_id, file_id)
    if any(f.id == file_id for f in kn.kbs.files(found.vector_store_id)):
        kn.kbs.remove_file(found.vector_store_id, file_id)
    return DeleteVectorStoreFileResponse(id=file_id, deleted=True).model_dump(mode="json")


@router.get("/v1/vector_stores/{store_id}/files/{file_id}/content")
def file_content(store_id: str, file_id: str, kn: Knowledge = Depends(_knowledge)) -> dict:
    """The file's parsed text, one entry per chunk in order."""
    found = _find_file(kn, store_id, file_id)
    if found.status != "completed":
        return VectorStoreFileContentResponse(data=[]).model_dump(mode="json")
    texts = kn.kbs.file_text(found.vector_store_id, file_id)
    return VectorStoreFileContentResponse(data=[SearchContent(text=t) for t in texts]).model_dump(mode="json")


# -- file batches -------------------------------------------------------------------------------------
def _batch_files(kn: Knowledge, batch: Any) -> list[VectorStoreFileObject]:
    """The batch's files as they are now; one no longer known (removed, or cancelled before a restart) is left out."""
    wanted = set(batch.file_ids)
    return [f for f in _files(kn, batch.kb_id) if f.id in wanted]


def _batch_object(kn: Knowledge, batch: Any) -> VectorStoreFileBatchObject:
    counts = _counts(_batch_files(kn, batch))
    if counts["in_progress"]:
        status = "in_progress"
    elif batch.cancelled:
        status = "cancelled"
    elif counts["failed"] and not counts["completed"]:
        status = "failed"
    else:
        status = "completed"
    return VectorStoreFileBatchObject(id=batch.id, created_at=batch.created_at, vector_store_id=batch.kb_id,
                                      status=status, file_counts=FileCounts(**counts, total=len(batch.file_ids)))


@router.post("/v1/vector_stores/{store_id}/file_batches")
def create_batch(store_id: str, body: CreateVectorStoreFileBatchRequest, kn: Knowledge = Depends(_knowledge)) -> dict:
    kb = kn.kbs.usable(store_id)
    entries = body.entries()
    plans = []
    for entry in entries:  # every file exists and every chunking fits, or nothing starts
        kn.files.get(entry.file_id)
        plans.append((entry, _chunking(kn, kb.id, entry.chunking_strategy)))
    batch = kn.batches.create(kb.id, [e.file_id for e in entries])
    for entry, sizes in plans:
        kn.add_file(kb.id, entry.file_id, entry.attributes, sizes)
    return _batch_object(kn, batch).model_dump(mode="json")


@router.get("/v1/vector_stores/{store_id}/file_batches/{batch_id}")
def retrieve_batch(store_id: str, batch_id: str, kn: Knowledge = Depends(_knowledge)) -> dict:
    return _batch_object(kn, kn.batches.get(kn.kbs.get(store_id).id, batch_id)).model_dump(mode="json")


@router.post("/v1/vector_stores/{store_id}/file_batches/{batch_id}/cancel")
def cancel_batch(store_id: str, batch_id: str, kn: Knowledge = Depends(_knowledge)) -> dict:
    kb_id = kn.kbs.get(store_id).id
    batch = kn.batches.cancel(kb_id, batch_id)
    kn.cancel(kb_id, batch.file_ids)
    return _batch_object(kn, batch).model_dump(mode="json")


@router.get("/v1/vector_stores/{store_id}/file_batches/{batch_id}/files")
def list_batch_files(store_id: str, batch_id: str, query: FilePage = Depends(),
                     kn: Knowledge = Depends(_knowledge)) -> dict:
    return query.of(_batch_files(kn, kn.batches.get(kn.kbs.get(store_id).id, batch_id)))


@router.post("/v1/vector_stores/{store_id}/search")
def search(store_id: str, body: VectorStoreSearchRequest, kn: Knowledge = Depends(_knowledge)) -> dict:
    kb = kn.kbs.usable(store_id)
    queries = [body.query] if isinstance(body.query, str) else list(body.query)
    threshold = body.ranking_options.score_threshold if body.ranking_options else 0.0
    best: dict[str, Any] = {}  # chunk id -> its best hit over all queries
    for q in queries:
        for hit in kn.kbs.search(kb.id, q, k=body.max_num_results, filters=body.filters):
            key = str(hit.chunk_id)
            if key not in best or hit.score > best[key].score:
                best[key] = hit
    hits = sorted(best.values(), key=lambda h: h.score, reverse=True)[: body.max_num_results]
    data = [VectorStoreSearchResultItem(file_id=h.file_id, filename=h.filename,
                                        score=min(max(float(h.score), 0.0), 1.0),  # the spec's range
                                        attributes=h.attributes or None, content=[SearchContent(text=h.text)])
            for h in hits if h.score >= threshold]
    return VectorStoreSearchResultsPage(search_query=queries, data=data).model_dump(mode="json")
