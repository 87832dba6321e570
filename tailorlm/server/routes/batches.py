"""/v1/batches: create (the input file checked up front), retrieve, list, cancel; server/batch_runner.py runs them."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Query

from tailorlm.batches import BatchRecord, read_input
from tailorlm.errors import InvalidRequestError
from tailorlm.server.protocol.batches import Batch, CreateBatchRequest
from tailorlm.server.protocol.pagination import CursorPage, PageQuery, page
from tailorlm.server.state import ServerState, get_state

router = APIRouter()
BATCHES = "/v1/batches"


def _create(body: CreateBatchRequest, state: ServerState) -> BatchRecord:
    record = state.files.get(body.input_file_id)
    if record.purpose != "batch":
        raise InvalidRequestError(f"The file {record.id} was uploaded with purpose {record.purpose!r}; a batch's "
                                  "input file is uploaded with purpose 'batch'.", param="input_file_id")
    with open(state.files.path(record.id), "rb") as fh:
        lines, errors = read_input(fh, body.endpoint)
    return state.batches.create(body.endpoint, record.id, body.completion_window, body.metadata, lines, errors,
                                window_s=state.settings.batch_window_s)


@router.post(BATCHES)
async def create(body: CreateBatchRequest, state: ServerState = Depends(get_state)) -> dict:
    batch = await asyncio.to_thread(_create, body, state)  # reads the whole file: off the event loop
    state.batch_runner.wake()
    return Batch.from_record(batch).model_dump(mode="json")


@router.get(BATCHES + "/{batch_id}")
def retrieve(batch_id: str, state: ServerState = Depends(get_state)) -> dict:
    return Batch.from_record(state.batches.get(batch_id)).model_dump(mode="json")


@router.get(BATCHES)
def list_batches(limit: int = Query(20, ge=1, le=100), after: str | None = None,
                 state: ServerState = Depends(get_state)) -> dict:
    window, more = page(state.batches.list(), PageQuery(limit, "desc", after or None),
                        missing="No such batch: {}".format)
    return CursorPage.build([Batch.from_record(b) for b in window], more).model_dump(mode="json")


@router.post(BATCHES + "/{batch_id}/cancel")
def cancel(batch_id: str, state: ServerState = Depends(get_state)) -> dict:
    batch = state.batches.cancel(batch_id)
    state.batch_runner.cancelled(batch_id)
    return Batch.from_record(batch).model_dump(mode="json")
