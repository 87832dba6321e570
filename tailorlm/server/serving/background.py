"""Background responses (`background: true`), as OpenAI runs them: the request is checked and its generation
started at once, the stored response (`queued`) answered, and the run goes on without the client; `GET
/v1/responses/{id}` polls it to `completed` / `incomplete` / `failed` / `cancelled`, `POST …/cancel` stops it.
With `stream: true` too, its events (sequence numbered, stored as they go) stream to the creating client and to
any later `GET …?stream=true&starting_after=N`; a client that goes away does not stop the run.

A restarted server takes up what the last one left unfinished (`recover`): a response nobody can have seen part
of (queued, or not streamed) runs again from its stored request; a streamed one that had started fails, since
its events were seen and a second run would not continue them (docs/decisions.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import JSONResponse, StreamingResponse

from tailorlm.errors import InvalidRequestError, TailorError
from tailorlm.responses import StoredResponse
from tailorlm.server.background_responses import EventLog
from tailorlm.server.errors import internal_error_body
from tailorlm.server.protocol.responses import CreateResponseRequest, ResponseObject
from tailorlm.server.serving import generation as gen
from tailorlm.server.serving import responses
from tailorlm.server.state import ServerState

log = logging.getLogger("tailorlm.server")
RUNNING = ("queued", "in_progress")
INTERRUPTED = ("The server stopped while this response was being streamed; its stream cannot be continued. Create "
               "the response again.")


class Interrupted(Exception):
    """The engine dropped the generation (shutdown): the run ends as it stands, for the next start to take up."""


async def create(body: CreateResponseRequest, state: ServerState):
    """Start a background response; answer it `queued` (or stream its events, `response.created` first)."""
    if body.store is False:
        raise InvalidRequestError("A background response is stored (polling reads it back): background requires "
                                  "store to be true.", param="background")
    turn = await responses.begin(body, state)
    shell = turn.response("queued").model_dump(mode="json")
    request = body.model_dump(mode="json", exclude_unset=True)
    try:
        await asyncio.to_thread(state.responses.put, StoredResponse(turn.id, turn.created_at, shell, turn.items,
                                                                    request))
    except BaseException:
        for run in turn.started.runs:
            run.request.cancel()
        raise
    events = None
    if body.stream:
        events = await state.background.open_log(turn.id)
        for kind in ("response.created", "response.queued"):
            events.add({"type": kind, "response": shell})
    state.background.spawn(turn.id, _run(turn, state, events))
    if body.stream:
        return StreamingResponse(_sse(state.background.follow(turn.id, -1)), media_type="text/event-stream")
    return JSONResponse(shell)


async def _run(turn: responses.Turn, state: ServerState, events: EventLog | None) -> None:
    """Run a background response to its end, storing it as its status changes (and its events, if streamed)."""
    try:
        if not await _save(state, turn.id, turn.response("in_progress").model_dump(mode="json"), ended=False):
            return  # cancelled or deleted before it started
        async for event in responses.events(turn, state, lambda body: _end(state, turn, body)):
            if events is not None:
                events.add(event)
    except asyncio.CancelledError:
        if state.background.cancelling(turn.id):  # a client's cancel, not shutdown: recorded as such
            turn.builder.finish("incomplete")
            await _save(state, turn.id, turn.response("cancelled").model_dump(mode="json"), ended=True)
        raise
    except Interrupted:
        log.info("background response %s interrupted by shutdown; the next start takes it up", turn.id)
    except Exception as exc:
        if isinstance(exc, TailorError):
            message = exc.message
        else:
            log.exception("background response %s failed", turn.id)
            message = internal_error_body()["error"]["message"]
        failed = turn.response("failed", {"code": "server_error", "message": message}).model_dump(mode="json")
        if await _save(state, turn.id, failed, ended=True) and events is not None:
            events.add({"type": "response.failed", "response": failed})
    finally:
        for run in turn.started.runs:  # cancelled before its stream was read: free the engine's slot
            run.request.cancel()
        if events is not None:
            await events.close()


async def _save(state: ServerState, response_id: str, body: dict[str, Any], *, ended: bool) -> bool:
    """Store the response object, unless it has ended meanwhile (cancelled, deleted); whether it was stored."""
    return await asyncio.to_thread(state.responses.update, response_id, body, only_from=RUNNING, ended=ended)


async def _end(state: ServerState, turn: responses.Turn, body: ResponseObject) -> dict[str, Any]:
    if turn.aborted:
        raise Interrupted
    data = body.model_dump(mode="json")
    await _save(state, turn.id, data, ended=True)
    return data


async def _sse(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[str]:
    async for event in events:
        yield gen.sse(event, event["type"])


# -- streaming again, cancelling --------------------------------------------------------------------------------
async def stream(state: ServerState, response_id: str, starting_after: int | None) -> StreamingResponse:
    """GET /v1/responses/{id}?stream=true: the events of a streamed background response after `starting_after`."""
    stored = await asyncio.to_thread(state.responses.get, response_id)
    if not stored.body.get("background") or not await asyncio.to_thread(state.responses.streamed, response_id):
        raise InvalidRequestError("Only a response created with background and stream set to true can be streamed "
                                  "again; retrieve this one without stream.", param="stream")
    after = -1 if starting_after is None else starting_after
    return StreamingResponse(_sse(state.background.follow(response_id, after)), media_type="text/event-stream")


async def cancel(state: ServerState, response_id: str) -> dict[str, Any]:
    """POST /v1/responses/{id}/cancel: stop a queued or running background response; cancelling a cancelled one
    again answers it as it is, anything else is a 400 (a response that was not created in the background, or
    one that has ended)."""
    stored = await asyncio.to_thread(state.responses.get, response_id)
    if stored.body.get("status") == "cancelled":
        return stored.body
    _cancellable(stored)
    if not await state.background.cancel(response_id):  # not running here (a start still taking it up)
        await _save(state, response_id, {**stored.body, "status": "cancelled"}, ended=True)
    stored = await asyncio.to_thread(state.responses.get, response_id)
    if stored.body.get("status") != "cancelled":  # it ended on its own before the cancel reached it
        _cancellable(stored)
    return stored.body


def _cancellable(stored: StoredResponse) -> None:
    if not stored.body.get("background"):
        raise InvalidRequestError("Cannot cancel a synchronous response: only a response created with background "
                                  "set to true can be cancelled.", param="response_id")
    status = stored.body.get("status")
    if status not in RUNNING:
        raise InvalidRequestError(f"Cannot cancel a {status} response.", param="response_id")


# -- after a restart ----------------------------------------------------------------------------------------------
async def recover(state: ServerState) -> None:
    """Take up the background responses that had not ended when the last server stopped."""
    for stored in await asyncio.to_thread(state.responses.unfinished):
        try:
            await _recover(state, stored)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("could not take up background response %s", stored.id)


async def _recover(state: ServerState, stored: StoredResponse) -> None:
    request = stored.request or {}
    streamed = request.get("stream") is True
    if streamed and stored.body.get("status") == "in_progress":
        return await _fail(state, stored, INTERRUPTED)
    try:
        turn = await responses.begin(CreateResponseRequest.model_validate(request), state, response_id=stored.id,
                                     created_at=stored.created_at)
    except TailorError as exc:  # the model or the previous response is gone, say
        return await _fail(state, stored, exc.message)
    events = await state.background.open_log(stored.id) if streamed else None
    state.background.spawn(stored.id, _run(turn, state, events))
    log.info("background response %s runs again after a restart", stored.id)


async def _fail(state: ServerState, stored: StoredResponse, message: str) -> None:
    failed = {**stored.body, "status": "failed", "error": {"code": "server_error", "message": message}}
    if not await _save(state, stored.id, failed, ended=True):
        return
    seen = await asyncio.to_thread(state.responses.events, stored.id)
    if seen:  # the stream ends, after whatever its clients saw, with the failure
        last = seen[-1]["sequence_number"]
        await asyncio.to_thread(state.responses.add_events, stored.id,
                                [{"type": "response.failed", "response": failed, "sequence_number": last + 1}])
    log.info("background response %s failed: %s", stored.id, message)
