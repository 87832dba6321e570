"""A chat addressed to a preset: its defaults and system prompt, its model, and grounding in its knowledge bases."""

from __future__ import annotations

import asyncio
from typing import Any

from tailorlm.presets import grounding
from tailorlm.server.protocol.chat import ChatCompletionRequest
from tailorlm.server.state import ServerState

_MAX_TOKENS = ("max_tokens", "max_completion_tokens")


async def prepare(req: ChatCompletionRequest,
                  state: ServerState) -> tuple[ChatCompletionRequest, str, list[dict[str, Any]] | None]:
    """(request to run, model to run it on, sources to return). A request for no preset passes unchanged;
    the response still names the preset (`req.model`), as OpenAI names the model asked for."""
    preset = state.registry.presets.find(req.model)
    if preset is None:
        return req, req.model, None
    sources: list[grounding.Source] = []
    if preset.knowledge:
        query = grounding.last_user_text(req.messages)
        sources = await asyncio.to_thread(grounding.retrieve, state.knowledge.kbs, preset, query)
    given = req.model_fields_set
    defaults = {k: v for k, v in preset.parameters.items()
                if k not in given and not (k in _MAX_TOKENS and given & set(_MAX_TOKENS))}
    body = {**req.model_dump(exclude_unset=True), **defaults,
            "messages": grounding.apply(preset, req.messages, sources)}
    return ChatCompletionRequest.model_validate(body), preset.target, [s.model_dump() for s in sources]
