"""A chat addressed to a preset: its defaults and system prompt, its model, and grounding in its knowledge bases."""

from __future__ import annotations

import asyncio
from typing import Any

from tailorlm.presets import grounding
from tailorlm.runtime.resolve import Resolved
from tailorlm.server.protocol.chat import ChatCompletionRequest
from tailorlm.server.state import ServerState


async def prepare(req: ChatCompletionRequest, found: Resolved,
                  state: ServerState) -> tuple[ChatCompletionRequest, list[dict[str, Any]] | None]:
    """(request to run, sources to return). A request for no preset passes unchanged; the response still
    names the preset (`req.model`), as OpenAI names the model asked for."""
    preset = found.preset
    if preset is None:
        return req, None
    messages, sources = await asyncio.to_thread(  # the knowledge bases open (embedding model) off the loop
        lambda: grounding.ground(state.knowledge.kbs if preset.knowledge else None, preset, req.messages))
    body = {**req.model_dump(exclude_unset=True), **preset.defaults_for(req.model_fields_set), "messages": messages}
    return ChatCompletionRequest.model_validate(body), [s.model_dump() for s in sources]
