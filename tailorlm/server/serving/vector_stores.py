"""Vector stores over tailorlm's knowledge bases: a store is a knowledge base, its files are uploaded files
(/v1/files) ingested in the background (server/knowledge.py). Every function answers with a protocol object.

Plain functions: the routes that call them run off the event loop, and so does the knowledge base's disk work.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from tailorlm.errors import NotFoundError
from tailorlm.server.knowledge import Knowledge
from tailorlm.server.protocol.pagination import CursorPage, PageQuery, page
from tailorlm.server.protocol.vector_stores import (
    ChunkingStrategy,
    CreateVectorStoreFileBatchRequest,
    CreateVectorStoreFileRequest,
    CreateVectorStoreRequest,
    DeleteVectorStoreFileResponse,
    DeleteVectorStoreResponse,
    FileStatus,
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

if TYPE_CHECKING:  # tailorlm.kb is imported when a store is first used (Knowledge.kbs)
    from tailorlm.kb import KnowledgeBase
    from tailorlm.kb.batches import FileBatch


def _chunking(kn: Knowledge, kb_id: str | None, strategy: ChunkingStrategy | None) -> tuple[int, int] | None:
    """A request's chunking as (max tokens, overlap), checked against the embedding model now (a 400, not a
    file that fails later)."""
    sizes = strategy.sizes() if strategy is not None else None
    if sizes is not None:
        kn.kbs.check_chunking(kb_id, sizes)
    return sizes


def _files(kn: Knowledge, kb_id: str) -> list[VectorStoreFileObject]:
    """The files of a store, oldest first: the knowledge base's records, and those still being ingested
    (or failed early)."""
    chunking = (kn.kbs.chunk_tokens, kn.kbs.overlap)
    done = {f.id: VectorStoreFileObject.from_record(f, chunking) for f in kn.kbs.files(kb_id)}
    pending = [VectorStoreFileObject.from_record(p, chunking) for p in kn.pending_for(kb_id)
               if p.id not in done or p.status == "in_progress"]
    merged = {**done, **{p.id: p for p in pending}}
    return sorted(merged.values(), key=lambda f: f.created_at)


def _store(kn: Knowledge, kb: KnowledgeBase) -> VectorStoreObject:
    return VectorStoreObject.from_record(kb, _files(kn, kb.id))


def _file_page(files: list[VectorStoreFileObject], q: PageQuery,
               status: FileStatus | None) -> CursorPage[VectorStoreFileObject]:
    if status is not None:  # before paging: a cursor names a file the filter shows
        files = [f for f in files if f.status == status]
    return CursorPage.build(*page(files, q))


# -- stores -------------------------------------------------------------------------------------------
def create_store(kn: Knowledge, body: CreateVectorStoreRequest) -> VectorStoreObject:
    for file_id in body.file_ids:
        kn.files.get(file_id)  # every file exists, or nothing is created
    name = body.name or f"store-{datetime.now().strftime('%Y%m%d-%H%M%S-%f')}"
    sizes = _chunking(kn, None, body.chunking_strategy)  # before the store exists: a bad request creates nothing
    expiry = body.expires_after.model_dump() if body.expires_after else None
    kb = kn.kbs.create(name, metadata=body.metadata, expires_after=expiry)
    for file_id in body.file_ids:
        kn.add_file(kb.id, file_id, None, sizes)
    return _store(kn, kb)


def list_stores(kn: Knowledge, q: PageQuery) -> CursorPage[VectorStoreObject]:
    window, more = page(kn.kbs.list(), q)
    return CursorPage.build([_store(kn, kb) for kb in window], more)


def retrieve_store(kn: Knowledge, store_id: str) -> VectorStoreObject:
    return _store(kn, kn.kbs.get(store_id))


def update_store(kn: Knowledge, store_id: str, body: UpdateVectorStoreRequest) -> VectorStoreObject:
    kb = kn.kbs.update(store_id, name=body.name, metadata=body.metadata,
                       expires_after=body.expires_after.model_dump() if body.expires_after else None)
    return _store(kn, kb)


def delete_store(kn: Knowledge, store_id: str) -> DeleteVectorStoreResponse:
    kb = kn.kbs.get(store_id)
    kn.kbs.remove(kb.id)
    kn.forget(kb.id)
    return DeleteVectorStoreResponse(id=kb.id)


# -- files --------------------------------------------------------------------------------------------
def add_file(kn: Knowledge, store_id: str, body: CreateVectorStoreFileRequest) -> VectorStoreFileObject:
    kb = kn.kbs.usable(store_id)
    pending = kn.add_file(kb.id, body.file_id, body.attributes, _chunking(kn, kb.id, body.chunking_strategy))
    return VectorStoreFileObject.from_record(pending, (kn.kbs.chunk_tokens, kn.kbs.overlap))


def list_files(kn: Knowledge, store_id: str, q: PageQuery,
               status: FileStatus | None) -> CursorPage[VectorStoreFileObject]:
    return _file_page(_files(kn, kn.kbs.get(store_id).id), q, status)


def retrieve_file(kn: Knowledge, store_id: str, file_id: str) -> VectorStoreFileObject:
    kb = kn.kbs.get(store_id)
    for f in _files(kn, kb.id):
        if f.id == file_id:
            return f
    raise NotFoundError(f"No file {file_id} in vector store {kb.id}", param="file_id")


def delete_file(kn: Knowledge, store_id: str, file_id: str) -> DeleteVectorStoreFileResponse:
    found = retrieve_file(kn, store_id, file_id)
    kn.forget(found.vector_store_id, file_id)
    if any(f.id == file_id for f in kn.kbs.files(found.vector_store_id)):
        kn.kbs.remove_file(found.vector_store_id, file_id)
    return DeleteVectorStoreFileResponse(id=file_id)


def file_content(kn: Knowledge, store_id: str, file_id: str) -> VectorStoreFileContentResponse:
    """The file's parsed text, one entry per chunk in order; none until it is ingested."""
    found = retrieve_file(kn, store_id, file_id)
    texts = kn.kbs.file_text(found.vector_store_id, file_id) if found.status == "completed" else []
    return VectorStoreFileContentResponse(data=[SearchContent(text=t) for t in texts])


# -- file batches -------------------------------------------------------------------------------------
def _batch_files(kn: Knowledge, batch: FileBatch) -> list[VectorStoreFileObject]:
    """The batch's files as they are now; one no longer known (removed, or cancelled before a restart) is left out."""
    wanted = set(batch.file_ids)
    return [f for f in _files(kn, batch.kb_id) if f.id in wanted]


def _batch(kn: Knowledge, batch: FileBatch) -> VectorStoreFileBatchObject:
    return VectorStoreFileBatchObject.from_record(batch, _batch_files(kn, batch))


def create_batch(kn: Knowledge, store_id: str, body: CreateVectorStoreFileBatchRequest) -> VectorStoreFileBatchObject:
    kb = kn.kbs.usable(store_id)
    entries = body.entries()
    plans = []
    for entry in entries:  # every file exists and every chunking fits, or nothing starts
        kn.files.get(entry.file_id)
        plans.append((entry, _chunking(kn, kb.id, entry.chunking_strategy)))
    batch = kn.batches.create(kb.id, [e.file_id for e in entries])
    for entry, sizes in plans:
        kn.add_file(kb.id, entry.file_id, entry.attributes, sizes)
    return _batch(kn, batch)


def retrieve_batch(kn: Knowledge, store_id: str, batch_id: str) -> VectorStoreFileBatchObject:
    return _batch(kn, kn.batches.get(kn.kbs.get(store_id).id, batch_id))


def cancel_batch(kn: Knowledge, store_id: str, batch_id: str) -> VectorStoreFileBatchObject:
    kb_id = kn.kbs.get(store_id).id
    batch = kn.batches.cancel(kb_id, batch_id)
    kn.cancel(kb_id, batch.file_ids)
    return _batch(kn, batch)


def list_batch_files(kn: Knowledge, store_id: str, batch_id: str, q: PageQuery,
                     status: FileStatus | None) -> CursorPage[VectorStoreFileObject]:
    batch = kn.batches.get(kn.kbs.get(store_id).id, batch_id)
    return _file_page(_batch_files(kn, batch), q, status)


# -- search -------------------------------------------------------------------------------------------
def search(kn: Knowledge, store_id: str, body: VectorStoreSearchRequest) -> VectorStoreSearchResultsPage:
    """Every query searched; each chunk at its best score over them, best first, down to the threshold."""
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
    data = [VectorStoreSearchResultItem.from_record(h) for h in hits if h.score >= threshold]
    return VectorStoreSearchResultsPage(search_query=queries, data=data)
