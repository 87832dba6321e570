"""POST /v1/chat/completions: render, submit n choices, parse outputs, answer or stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from tailorlm.chat.output import MessageDelta, OutputParser
from tailorlm.chat.plan import ChatOptions, ChatPlan
from tailorlm.engine import SamplingParams, TokenEvent
from tailorlm.errors import InvalidRequestError
from tailorlm.runtime import OpenModel
from tailorlm.runtime.textgen import chat_plan
from tailorlm.server.protocol.chat import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    ChatMessage,
    ChoiceLogprobs,
    FunctionCall,
    FunctionCallDelta,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
    TopLogprob,
)
from tailorlm.server.protocol.common import Usage, new_id, now, stop_list
from tailorlm.server.serving import generation as gen
from tailorlm.server.serving import presets
from tailorlm.server.state import ServerState


def plan_for(model: OpenModel, req: ChatCompletionRequest) -> ChatPlan:
    """The request's plan (tailorlm/chat/plan.py), as the CLI makes it for the same conversation."""
    return chat_plan(model, req.messages, ChatOptions(
        tools=req.tools, tool_choice=req.tool_choice, parallel_tool_calls=req.parallel_tool_calls,
        reasoning_effort=req.reasoning_effort, response_format=req.response_format))


def _logprobs(model: OpenModel, events: list[TokenEvent]) -> ChoiceLogprobs:
    tok = model.tokenizer

    def entry(token_id: int, logprob: float) -> TopLogprob:
        text = tok.decode([token_id])
        return TopLogprob(token=text, logprob=logprob, bytes=list(text.encode("utf-8")))

    content = []
    for e in events:
        if e.logprob is None or e.is_stop_token:
            continue
        head = entry(e.token_id, e.logprob)
        content.append(TokenLogprob(**head.model_dump(), top_logprobs=[entry(t, lp) for t, lp in e.top_logprobs]))
    return ChoiceLogprobs(content=content)


def _params(req: ChatCompletionRequest, plan: ChatPlan) -> list[SamplingParams]:
    max_tokens = req.max_completion_tokens or req.max_tokens
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    params = []
    for i in range(req.n):
        p = req.engine_params(max_tokens, logprobs, choice=i)
        p.constraint = plan.constraint()
        p.stop_token_ids = list(plan.stop_token_ids)
        params.append(p)
    return params


def _tool_delta(d) -> ToolCallDelta:
    fn = None
    if d.name is not None or d.arguments is not None:
        fn = FunctionCallDelta(name=d.name, arguments=d.arguments)
    return ToolCallDelta(index=d.index, id=d.id, type="function" if d.id else None, function=fn)


def _chat_delta(d: MessageDelta) -> ChatDelta:
    return ChatDelta(content=d.content, reasoning_content=d.reasoning,
                     tool_calls=[_tool_delta(t) for t in d.tool_calls] if d.tool_calls else None)


@dataclass
class StartedChat:
    """A chat request in flight: the request as run (a preset's defaults applied), its model, its choices and
    their parsers, and what a preset's knowledge bases gave. Chat completions and Responses both start here."""

    req: ChatCompletionRequest
    model: OpenModel
    runs: list[gen.ChoiceRun]
    parsers: list[OutputParser]
    sources: list[dict] | None


async def start(req: ChatCompletionRequest, state: ServerState) -> StartedChat:
    """Resolve the model (preset, adapter or model), plan the chat and submit its choices."""
    if req.n > state.settings.max_n:
        raise InvalidRequestError(f"n must be at most {state.settings.max_n}.", param="n")
    found = state.registry.resolve(req.model)
    req, sources = await presets.prepare(req, found, state)
    model = await state.registry.get(found)
    plan = await asyncio.to_thread(plan_for, model, req)  # template, tokenizer and grammar: off the event loop
    gen.check_prompt(model, plan.prompt, state.settings.max_prompt_tokens)
    runs = gen.start_choices(model, plan.prompt, _params(req, plan), stop_list(req.stop))
    return StartedChat(req, model, runs, [plan.parser() for _ in runs], sources)


async def create(req: ChatCompletionRequest, http: Request | None, state: ServerState):
    started = await start(req, state)
    req, model, runs, parsers, sources = (started.req, started.model, started.runs, started.parsers,
                                          started.sources)
    cid, created = new_id("chatcmpl"), now()
    if req.stream:
        return StreamingResponse(_stream(req, model, runs, parsers, cid, created, state, sources),
                                 media_type="text/event-stream")

    await gen.collect(runs, http, lambda run, d: parsers[run.index].feed(d.text, d.token_id))
    gen.record(state.metrics, model.name, runs)
    choices = []
    for run, parser in zip(runs, parsers):
        parser.finish()
        msg = parser.message
        calls = [ToolCall(id=c.id, function=FunctionCall(name=c.name, arguments=c.arguments)) for c in msg.tool_calls]
        reason = "tool_calls" if calls else gen.finish_reason(run.result)
        choices.append(ChatChoice(
            index=run.index,
            message=ChatMessage(content=msg.content if (msg.content or not calls) else None,
                                tool_calls=calls or None, reasoning_content=msg.reasoning),
            logprobs=_logprobs(model, run.events) if req.logprobs else None,
            finish_reason=reason,
        ))
    body = ChatCompletion(id=cid, created=created, model=req.model, choices=choices, usage=Usage(**gen.usage(runs)),
                          sources=sources)
    return JSONResponse(body.model_dump(mode="json"))


async def _stream(req: ChatCompletionRequest, model: OpenModel, runs: list[gen.ChoiceRun],
                  parsers: list[OutputParser], cid: str, created: int, state: ServerState,
                  sources: list[dict] | None = None) -> AsyncIterator[str]:
    def chunk(choices: list[ChatChunkChoice], usage: Usage | None = None, sources: list[dict] | None = None) -> str:
        return gen.sse(ChatCompletionChunk(id=cid, created=created, model=req.model, choices=choices,
                                           usage=usage, sources=sources).model_dump(mode="json"))

    yield chunk([ChatChunkChoice(index=r.index, delta=ChatDelta(role="assistant", content="")) for r in runs],
                sources=sources)
    called = [False] * len(runs)
    sent = [0] * len(runs)  # token events already covered by logprobs
    async for run, delta in gen.merged_deltas(runs):
        parser = parsers[run.index]
        pieces = parser.feed(delta.text, delta.token_id) if delta is not None else parser.finish()
        for piece in pieces:
            called[run.index] |= bool(piece.tool_calls)
            lp = None
            if req.logprobs:
                lp = _logprobs(model, run.events[sent[run.index]:])
                sent[run.index] = len(run.events)
            yield chunk([ChatChunkChoice(index=run.index, delta=_chat_delta(piece), logprobs=lp)])
        if delta is None:
            reason = "tool_calls" if called[run.index] else gen.finish_reason(run.result)
            yield chunk([ChatChunkChoice(index=run.index, delta=ChatDelta(), finish_reason=reason)])
    gen.record(state.metrics, model.name, runs)
    if req.stream_options and req.stream_options.include_usage:
        yield chunk([], Usage(**gen.usage(runs)))
    yield gen.sse("[DONE]")
