"""/v1/responses: a Responses request runs as the chat request it amounts to. Its items (after the stored ones of
`previous_response_id`) become chat messages, `file_search` grounds them, serving/chat.py starts the chat (model,
preset or adapter resolved, the chat plan rendering, constraining and parsing as for chat completions), and the
parsed answer is built into output items (response_output.py), streamed as events or answered whole, and stored."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from tailorlm.errors import InvalidRequestError, TailorError
from tailorlm.presets import grounding
from tailorlm.responses import StoredResponse
from tailorlm.runtime import TextDelta
from tailorlm.server.protocol.chat import ChatCompletionRequest
from tailorlm.server.protocol.common import now
from tailorlm.server.protocol.pagination import CursorPage, PageQuery, page
from tailorlm.server.protocol.responses import (
    CreateResponseRequest,
    IncompleteDetails,
    ResponseDeleted,
    ResponseObject,
    ResponseUsage,
)
from tailorlm.server.protocol.sampling import SamplingFields
from tailorlm.server.serving import chat, file_search
from tailorlm.server.serving import generation as gen
from tailorlm.server.serving.response_items import (
    chat_messages,
    chat_tool_choice,
    echoed_tools,
    item_id,
    response_format,
    split_tools,
    stored_input,
)
from tailorlm.server.serving.response_output import OutputBuilder
from tailorlm.server.state import ServerState

# Where a chat field's error points in a Responses request; the open-model sampling extensions pass through.
PARAMS = {"max_completion_tokens": "max_output_tokens", "max_tokens": "max_output_tokens", "reasoning_effort": "reasoning.effort",
          "response_format": "text.format", "messages": "input"}
EXTENSIONS = frozenset(SamplingFields.model_fields) - {"n", "stop", "temperature", "top_p", "user"}


@dataclass
class Turn:
    """One response being made: the request, the items it was given, and the chat that answers it."""

    body: CreateResponseRequest
    id: str
    created_at: int
    items: list[dict[str, Any]]
    started: chat.StartedChat
    builder: OutputBuilder

    def response(self, status: str, error: dict[str, str] | None = None) -> ResponseObject:
        """The response object as it stands: `queued` and `in_progress` ones have no output or usage yet; a
        `failed` one carries `error` ({code, message})."""
        req, b = self.started.req, self.body
        running = status in ("queued", "in_progress")
        usage = None
        if not running:
            use = gen.usage(self.started.runs)
            usage = ResponseUsage.of(use["prompt_tokens"], use["completion_tokens"])
        return ResponseObject(
            id=self.id, created_at=self.created_at, status=status, background=b.background is True, error=error,
            completed_at=now() if status == "completed" else None,
            incomplete_details=IncompleteDetails(reason="max_output_tokens") if status == "incomplete" else None,
            instructions=b.instructions, max_output_tokens=b.max_output_tokens, model=b.model,
            output=[] if running else list(self.builder.items),
            parallel_tool_calls=b.parallel_tool_calls is not False, previous_response_id=b.previous_response_id,
            reasoning=b.reasoning, store=b.store is not False,
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            text=b.text or {"format": {"type": "text"}}, tool_choice=b.tool_choice or "auto",
            tools=echoed_tools(b.tools), usage=usage, metadata=b.metadata or {}, sources=self.started.sources)

    @property
    def status(self) -> str:
        return "incomplete" if gen.finish_reason(self.started.runs[0].result) == "length" else "completed"

    @property
    def aborted(self) -> bool:
        """Whether the engine dropped the generation (shutdown) rather than the model ending it."""
        return any(run.result.finish_reason == "abort" for run in self.started.runs)


def _chat_request(body: CreateResponseRequest, messages: list[dict[str, Any]],
                  functions: list[dict[str, Any]]) -> ChatCompletionRequest:
    """The chat request this response amounts to; fields left unset stay unset, so a preset's defaults apply."""
    fields = {"model": body.model, "messages": messages, "temperature": body.temperature, "top_p": body.top_p,
              "max_completion_tokens": body.max_output_tokens, "tools": functions or None,
              "tool_choice": chat_tool_choice(body.tool_choice) if functions else None,
              "parallel_tool_calls": body.parallel_tool_calls, "response_format": response_format(body.text),
              "reasoning_effort": (body.reasoning or {}).get("effort"), "user": body.user,
              **{k: v for k, v in (body.model_extra or {}).items() if k in EXTENSIONS}}
    try:
        return ChatCompletionRequest.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first.get("loc") else None
        param = PARAMS.get(field, field)
        raise InvalidRequestError(f"Invalid value for {param}: {first['msg']}.", param=param) from None


async def begin(body: CreateResponseRequest, state: ServerState, *, response_id: str | None = None,
                created_at: int | None = None) -> Turn:
    """Check the request and start its generation (a 4xx now for anything wrong with it); `response_id` and
    `created_at` name a stored response being run again."""
    history: list[dict[str, Any]] = []
    if body.previous_response_id is not None:
        prev = await asyncio.to_thread(state.responses.get, body.previous_response_id, param="previous_response_id")
        if prev.body.get("status") in ("queued", "in_progress"):
            raise InvalidRequestError(f"The previous response {prev.id} is still {prev.body['status']}; continue it "
                                      "once it has ended.", param="previous_response_id")
        history = prev.input_items + prev.body["output"]
    items = history + stored_input(body.input)
    functions, searches = split_tools(body.tools)
    messages = chat_messages(items, body.instructions)
    search = None
    if searches and body.tool_choice != "none":
        include = file_search.RESULTS in (body.include or [])
        search = await asyncio.to_thread(file_search.search, state.knowledge, searches,
                                         grounding.last_user_text(messages), include)
        messages = grounding.with_sources(messages, search.sources)
    try:
        started = await chat.start(_chat_request(body, messages, functions), state)
    except TailorError as exc:  # named as the Responses request names it
        exc.param = PARAMS.get(exc.param or "", exc.param)
        raise
    annotate = (lambda text: file_search.citations(text, search.sources)) if search else None
    builder = OutputBuilder([search.item] if search else [], annotate)
    return Turn(body, response_id or item_id("resp"), created_at or now(), items, started, builder)


async def _store(turn: Turn, body: ResponseObject, state: ServerState) -> dict[str, Any]:
    data = body.model_dump(mode="json")
    if turn.body.store is not False:
        await asyncio.to_thread(state.responses.put, StoredResponse(turn.id, turn.created_at, data, turn.items))
    return data


async def create(body: CreateResponseRequest, http: Request | None, state: ServerState):
    """A response answered now, whole or streamed (serving/background.py runs `background` ones)."""
    turn = await begin(body, state)
    if body.stream:
        return StreamingResponse(_stream(turn, state), media_type="text/event-stream")
    parser = turn.started.parsers[0]

    def on_delta(_: gen.ChoiceRun, d: TextDelta) -> None:
        for piece in parser.feed(d.text, d.token_id):
            turn.builder.feed(piece)

    await gen.collect(turn.started.runs, http, on_delta)
    for piece in parser.finish():
        turn.builder.feed(piece)
    status = turn.status
    turn.builder.finish(status)
    gen.record(state.metrics, turn.started.model.name, turn.started.runs)
    return JSONResponse(await _store(turn, turn.response(status), state))


async def events(turn: Turn, state: ServerState,
                 save: Callable[[ResponseObject], Awaitable[dict[str, Any]]]) -> AsyncIterator[dict[str, Any]]:
    """The stream events of a turn from `response.in_progress` to its end, without sequence numbers (whoever
    sends them numbers them); the last one carries what `save` stored of the final response."""
    yield {"type": "response.in_progress", "response": turn.response("in_progress").model_dump(mode="json")}
    for e in turn.builder.opening_events():
        yield e
    parser = turn.started.parsers[0]
    async for _, delta in gen.merged_deltas(turn.started.runs):
        for piece in parser.feed(delta.text, delta.token_id) if delta is not None else parser.finish():
            for e in turn.builder.feed(piece):
                yield e
    status = turn.status
    for e in turn.builder.finish(status):
        yield e
    gen.record(state.metrics, turn.started.model.name, turn.started.runs)
    final = await save(turn.response(status))
    yield {"type": f"response.{status}", "response": final}


async def _stream(turn: Turn, state: ServerState) -> AsyncIterator[str]:
    numbers = itertools.count()

    def event(e: dict[str, Any]) -> str:
        return gen.sse({**e, "sequence_number": next(numbers)}, e["type"])

    yield event({"type": "response.created", "response": turn.response("in_progress").model_dump(mode="json")})
    async for e in events(turn, state, lambda body: _store(turn, body, state)):
        yield event(e)


# -- stored responses ---------------------------------------------------------------------------------------------
def retrieve(state: ServerState, response_id: str) -> dict[str, Any]:
    return state.responses.get(response_id).body


def delete(state: ServerState, response_id: str) -> ResponseDeleted:
    state.responses.delete(response_id)
    return ResponseDeleted(id=response_id)


@dataclass
class _Listed:
    id: str
    item: dict[str, Any]


def input_items(state: ServerState, response_id: str, q: PageQuery) -> CursorPage[dict[str, Any]]:
    """The items the response was given (earlier turns' included), in `q.order`, paged by item id."""
    stored = state.responses.get(response_id)
    window, more = page([_Listed(i["id"], i) for i in stored.input_items], q,
                        missing=f"No item {{}} in the input of response {response_id}.".format)
    data = [w.item for w in window]
    return CursorPage[dict[str, Any]](data=data, has_more=more, first_id=data[0]["id"] if data else None,
                                      last_id=data[-1]["id"] if data else None)
