"""One line of a batch, run by the function its endpoint's route calls, answered as that route would answer:
the HTTP status and the JSON body (a completion, or the OpenAI error object)."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Response
from pydantic import BaseModel, ValidationError

from tailorlm.batches import InputLine, LineResult
from tailorlm.errors import InvalidRequestError, TailorError
from tailorlm.server.errors import error_response, internal_error_body, validation_response
from tailorlm.server.protocol.chat import ChatCompletionRequest
from tailorlm.server.protocol.completions import CompletionRequest
from tailorlm.server.protocol.embeddings import EmbeddingRequest
from tailorlm.server.protocol.responses import CreateResponseRequest
from tailorlm.server.serving import chat, completions, embeddings, responses
from tailorlm.server.state import ServerState

log = logging.getLogger("tailorlm.server")

# url -> (its request model, the serving function its route calls); no HTTP request: nothing to watch
Handler = Callable[[Any, ServerState], Awaitable[Response]]
ENDPOINTS: dict[str, tuple[type[BaseModel], Handler]] = {
    "/v1/chat/completions": (ChatCompletionRequest, lambda req, state: chat.create(req, None, state)),
    "/v1/completions": (CompletionRequest, lambda req, state: completions.create(req, None, state)),
    "/v1/embeddings": (EmbeddingRequest, lambda req, state: embeddings.create(req, state, state.embeddings)),
    "/v1/responses": (CreateResponseRequest, lambda req, state: responses.create(req, None, state)),
}


async def run(url: str, line: InputLine, state: ServerState) -> LineResult:
    """Run `line` against `url`; every failure is the line's answer (a 4xx/5xx body), only cancellation escapes."""
    model, handler = ENDPOINTS[url]
    try:
        for flag in ("stream", "background"):  # a line is answered whole, now
            if line.body.get(flag):
                raise InvalidRequestError(f"A batch request cannot set {flag}; leave it unset.", param=flag)
        answer = await handler(model.model_validate(line.body), state)
        status, body = answer.status_code, json.loads(bytes(answer.body))
    except ValidationError as exc:
        status, body = _json(validation_response(exc.errors()))
    except TailorError as exc:
        status, body = _json(error_response(exc))
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("batch line %s failed", line.custom_id)
        status, body = 500, internal_error_body()
    return LineResult(line.line, line.custom_id, f"batch_req_{uuid.uuid4().hex[:24]}", status,
                      f"req_{uuid.uuid4().hex}", body)


def _json(response: Response) -> tuple[int, dict[str, Any]]:
    return response.status_code, json.loads(bytes(response.body))
