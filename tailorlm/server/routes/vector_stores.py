"""/v1/vector_stores: OpenAI's vector stores API over tailorlm's knowledge bases (serving/vector_stores.py).

Handlers are plain functions, so FastAPI runs them (and the knowledge base's disk work) off the event loop.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query

from tailorlm.server.knowledge import Knowledge
from tailorlm.server.protocol.pagination import Order, PageQuery
from tailorlm.server.protocol.vector_stores import (
    CreateVectorStoreFileBatchRequest,
    CreateVectorStoreFileRequest,
    CreateVectorStoreRequest,
    FileStatus,
    UpdateVectorStoreRequest,
    VectorStoreSearchRequest,
)
from tailorlm.server.serving import vector_stores as vs
from tailorlm.server.state import ServerState, get_state

router = APIRouter()
STORES = "/v1/vector_stores"


def _knowledge(state: ServerState = Depends(get_state)) -> Knowledge:
    return state.knowledge


def _page(limit: int = Query(20, ge=1, le=100), order: Order = "desc", after: str | None = None,
          before: str | None = None) -> PageQuery:
    """OpenAI's cursor pagination of a list of stores or files."""
    return PageQuery(limit, order, after, before)


@router.post(STORES)
def create_store(body: CreateVectorStoreRequest, kn: Knowledge = Depends(_knowledge)) -> dict:
    return vs.create_store(kn, body).model_dump(mode="json")


@router.get(STORES)
def list_stores(q: PageQuery = Depends(_page), kn: Knowledge = Depends(_knowledge)) -> dict:
    return vs.list_stores(kn, q).model_dump(mode="json")


@router.get(STORES + "/{store_id}")
def retrieve_store(store_id: str, kn: Knowledge = Depends(_knowledge)) -> dict:
    return vs.retrieve_store(kn, store_id).model_dump(mode="json")


@router.post(STORES + "/{store_id}")
def update_store(store_id: str, body: UpdateVectorStoreRequest, kn: Knowledge = Depends(_knowledge)) -> dict:
    return vs.update_store(kn, store_id, body).model_dump(mode="json")


@router.delete(STORES + "/{store_id}")
def delete_store(store_id: str, kn: Knowledge = Depends(_knowledge)) -> dict:
    return vs.delete_store(kn, store_id).model_dump(mode="json")


@router.post(STORES + "/{store_id}/files")
def add_file(store_id: str, body: CreateVectorStoreFileRequest, kn: Knowledge = Depends(_knowledge)) -> dict:
    return vs.add_file(kn, store_id, body).model_dump(mode="json")


@router.get(STORES + "/{store_id}/files")
def list_files(store_id: str, q: PageQuery = Depends(_page), filter: FileStatus | None = None,  # noqa: A002
               kn: Knowledge = Depends(_knowledge)) -> dict:
    return vs.list_files(kn, store_id, q, filter).model_dump(mode="json")


@router.get(STORES + "/{store_id}/files/{file_id}")
def retrieve_file(store_id: str, file_id: str, kn: Knowledge = Depends(_knowledge)) -> dict:
    return vs.retrieve_file(kn, store_id, file_id).model_dump(mode="json")


@router.delete(STORES + "/{store_id}/files/{file_id}")
def delete_file(store_id: str, file_id: str, kn: Knowledge = Depends(_knowledge)) -> dict:
    return vs.delete_file(kn, store_id, file_id).model_dump(mode="json")


@router.get(STORES + "/{store_id}/files/{file_id}/content")
def file_content(store_id: str, file_id: str, kn: Knowledge = Depends(_knowledge)) -> dict:
    return vs.file_content(kn, store_id, file_id).model_dump(mode="json")


@router.post(STORES + "/{store_id}/file_batches")
def create_batch(store_id: str, body: CreateVectorStoreFileBatchRequest, kn: Knowledge = Depends(_knowledge)) -> dict:
    return vs.create_batch(kn, store_id, body).model_dump(mode="json")


@router.get(STORES + "/{store_id}/file_batches/{batch_id}")
def retrieve_batch(store_id: str, batch_id: str, kn: Knowledge = Depends(_knowledge)) -> dict:
    return vs.retrieve_batch(kn, store_id, batch_id).model_dump(mode="json")


@router.post(STORES + "/{store_id}/file_batches/{batch_id}/cancel")
def cancel_batch(store_id: str, batch_id: str, kn: Knowledge = Depends(_knowledge)) -> dict:
    return vs.cancel_batch(kn, store_id, batch_id).model_dump(mode="json")


@router.get(STORES + "/{store_id}/file_batches/{batch_id}/files")
def list_batch_files(store_id: str, batch_id: str, q: PageQuery = Depends(_page),
                     filter: FileStatus | None = None,  # noqa: A002 (OpenAI's name)
                     kn: Knowledge = Depends(_knowledge)) -> dict:
    return vs.list_batch_files(kn, store_id, batch_id, q, filter).model_dump(mode="json")


@router.post(STORES + "/{store_id}/search")
def search(store_id: str, body: VectorStoreSearchRequest, kn: Knowledge = Depends(_knowledge)) -> dict:
    return vs.search(kn, store_id, body).model_dump(mode="json")
