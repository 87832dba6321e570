"""POST /v1/chat/completions and /v1/completions."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from tailorlm.server.protocol.chat import ChatCompletionRequest
from tailorlm.server.protocol.completions import CompletionRequest
from tailorlm.server.serving import chat, completions
from tailorlm.server.state import ServerState, get_state

router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request, state: ServerState = Depends(get_state)):
    return await chat.create(body, request, state)


@router.post("/v1/completions")
async def text_completions(body: CompletionRequest, request: Request, state: ServerState = Depends(get_state)):
    return await completions.create(body, request, state)
