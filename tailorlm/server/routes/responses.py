"""/v1/responses: create (serving/responses.py runs it as a chat), retrieve, delete, and list a response's input items."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request

from tailorlm.server.protocol.pagination import Order, PageQuery
from tailorlm.server.protocol.responses import CreateResponseRequest
from tailorlm.server.serving import responses
from tailorlm.server.state import ServerState, get_state

router = APIRouter()
RESPONSES = "/v1/responses"


@router.post(RESPONSES)
async def create(body: CreateResponseRequest, request: Request, state: ServerState = Depends(get_state)):
    return await responses.create(body, request, state)


@router.get(RESPONSES + "/{response_id}")
def retrieve(response_id: str, state: ServerState = Depends(get_state)) -> dict:
    return responses.retrieve(state, response_id)


@router.delete(RESPONSES + "/{response_id}")
def delete(response_id: str, state: ServerState = Depends(get_state)) -> dict:
    return responses.delete(state, response_id).model_dump(mode="json")


@router.get(RESPONSES + "/{response_id}/input_items")
def input_items(response_id: str, limit: int = Query(20, ge=1, le=100), order: Order = "desc",
                after: str | None = None, before: str | None = None, state: ServerState = Depends(get_state)) -> dict:
    return responses.input_items(state, response_id, PageQuery(limit, order, after, before)).model_dump(mode="json")
