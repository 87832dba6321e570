"""/v1/responses: create (serving/responses.py runs it as a chat; serving/background.py a `background` one),
retrieve (polling; `stream=true` streams a background one again), cancel, delete, and list a response's input
items."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Query, Request

from tailorlm.server.protocol.pagination import Order, PageQuery
from tailorlm.server.protocol.responses import CreateResponseRequest
from tailorlm.server.serving import background, responses
from tailorlm.server.state import ServerState, get_state

router = APIRouter()
RESPONSES = "/v1/responses"


@router.post(RESPONSES)
async def create(body: CreateResponseRequest, request: Request, state: ServerState = Depends(get_state)):
    if body.background:
        return await background.create(body, state)
    return await responses.create(body, request, state)


@router.get(RESPONSES + "/{response_id}")
async def retrieve(response_id: str, stream: bool = False, starting_after: int | None = Query(None, ge=-1),
                   state: ServerState = Depends(get_state)):
    if stream:
        return await background.stream(state, response_id, starting_after)
    return await asyncio.to_thread(responses.retrieve, state, response_id)


@router.post(RESPONSES + "/{response_id}/cancel")
async def cancel(response_id: str, state: ServerState = Depends(get_state)) -> dict:
    return await background.cancel(state, response_id)


@router.delete(RESPONSES + "/{response_id}")
async def delete(response_id: str, state: ServerState = Depends(get_state)) -> dict:
    await state.background.cancel(response_id)  # a background response stops running before it goes
    return (await asyncio.to_thread(responses.delete, state, response_id)).model_dump(mode="json")


@router.get(RESPONSES + "/{response_id}/input_items")
def input_items(response_id: str, limit: int = Query(20, ge=1, le=100), order: Order = "desc",
                after: str | None = None, before: str | None = None, state: ServerState = Depends(get_state)) -> dict:
    return responses.input_items(state, response_id, PageQuery(limit, order, after, before)).model_dump(mode="json")
