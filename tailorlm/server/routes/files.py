"""/v1/files: upload (streamed to the FileStore), list, retrieve, download, delete.

Files are found by id in SQLite only; no value of a request is ever used as a path.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from tailorlm.errors import InUseError
from tailorlm.files.store import CHUNK
from tailorlm.server.protocol.files import DeleteFileResponse, OpenAIFile
from tailorlm.server.protocol.pagination import CursorPage, Order, PageQuery, page
from tailorlm.server.state import ServerState, get_state
from tailorlm.server.uploads import receive_upload

router = APIRouter()


@router.post("/v1/files")
async def create_file(request: Request, state: ServerState = Depends(get_state)) -> dict:
    record = await receive_upload(request, state.files)
    return OpenAIFile.from_record(record).model_dump(mode="json")


@router.get("/v1/files")
def list_files(
    purpose: str | None = None,
    limit: int = Query(10000, ge=1, le=10000),
    order: Order = "desc",
    after: str | None = None,
    state: ServerState = Depends(get_state),
) -> dict:
    # `after` may name a file of another purpose; an empty `after` is none
    window, more = page(state.files.list(), PageQuery(limit, order, after or None),
                        keep=lambda r: not purpose or r.purpose == purpose, missing="No such File object: {}".format)
    return CursorPage.build([OpenAIFile.from_record(r) for r in window], more).model_dump(mode="json")


@router.get("/v1/files/{file_id}")
def retrieve_file(file_id: str, state: ServerState = Depends(get_state)) -> dict:
    return OpenAIFile.from_record(state.files.get(file_id)).model_dump(mode="json")


@router.get("/v1/files/{file_id}/content")
def file_content(file_id: str, state: ServerState = Depends(get_state)) -> StreamingResponse:
    record = state.files.get(file_id)
    handle = open(state.files.path(file_id), "rb")  # opened now: a delete meanwhile cannot cut the stream
    headers = {"content-length": str(record.bytes),
               "content-disposition": f"attachment; filename*=utf-8''{quote(record.filename)}"}
    return StreamingResponse(_read(handle), media_type="application/octet-stream", headers=headers)


def _read(handle: BinaryIO) -> Iterator[bytes]:
    with handle:
        while chunk := handle.read(CHUNK):
            yield chunk


@router.delete("/v1/files/{file_id}")
def delete_file(file_id: str, state: ServerState = Depends(get_state)) -> dict:
    state.files.get(file_id)  # 404 first
    needed = state.jobs.needing_file(file_id)
    if needed:
        raise InUseError(f"file {file_id} is used by fine-tuning job {needed[0]}, which has not finished; cancel it "
                         "or wait for it to end, then delete the file", param="file_id")
    record = state.files.delete(file_id)
    return DeleteFileResponse(id=record.id).model_dump(mode="json")
