"""POST /v1/completions: plain text completion (no chat template), with echo and logprobs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from tailorlm.errors import InvalidRequestError
from tailorlm.runtime import OpenModel
from tailorlm.server.protocol.common import new_id, now, stop_list
from tailorlm.server.protocol.completions import (
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
)
from tailorlm.server.serving import generation as gen
from tailorlm.server.state import ServerState


def _one_prompt(prompt) -> bool:
    """A string or one list of token ids (as opposed to a list of prompts)."""
    return isinstance(prompt, str) or bool(prompt) and all(isinstance(p, int) for p in prompt)


def _prompts(model: OpenModel, prompt) -> list[list[int]]:
    """A string, a list of strings, a list of token ids, or a list of lists of token ids."""
    if isinstance(prompt, str):
        return [model.tokenizer.encode(prompt)]
    if not prompt:
        raise InvalidRequestError("The prompt is empty.", param="prompt")
    if _one_prompt(prompt):
        return [list(prompt)]
    if all(isinstance(p, str) for p in prompt):
        return [model.tokenizer.encode(p) for p in prompt]
    return [list(p) for p in prompt]


def _logprobs(model: OpenModel, prompt: list[int], run: gen.ChoiceRun, echo: bool) -> CompletionLogprobs:
    tok = model.tokenizer
    tokens, lps, tops, offsets = [], [], [], []
    offset = 0
    if echo:  # prompt tokens carry no logprob here (the first never can)
        for t in prompt:
            text = tok.decode([t])
            tokens.append(text); lps.append(None); tops.append(None); offsets.append(offset)
            offset += len(text)
    for e in run.events:
        if e.is_stop_token:
            continue
        text = tok.decode([e.token_id])
        tokens.append(text)
        lps.append(e.logprob)
        tops.append({tok.decode([t]): lp for t, lp in e.top_logprobs} if e.top_logprobs else None)
        offsets.append(offset)
        offset += len(text)
    return CompletionLogprobs(text_offset=offsets, token_logprobs=lps, tokens=tokens, top_logprobs=tops)


async def create(req: CompletionRequest, http: Request | None, state: ServerState):
    if req.suffix:
        raise InvalidRequestError("suffix is not supported by this server.", param="suffix")
    if req.best_of not in (None, req.n):
        raise InvalidRequestError("best_of is not supported; use n.", param="best_of")
    found = state.registry.resolve(req.model)
    if found.preset is not None:  # its defaults apply; its instructions and knowledge are for chats
        defaults = {k: v for k, v in found.preset.defaults_for(req.model_fields_set).items()
                    if k in CompletionRequest.model_fields}
        req = CompletionRequest.model_validate({**req.model_dump(exclude_unset=True), **defaults})
    # the number of prompts is known before any is tokenized: a huge list is refused without the work
    count = 1 if _one_prompt(req.prompt) else len(req.prompt)
    if req.n * count > state.settings.max_n:
        raise InvalidRequestError(f"n × prompts must be at most {state.settings.max_n}.", param="n")
    model = await state.registry.get(found)
    prompts = await asyncio.to_thread(_prompts, model, req.prompt)  # tokenizing is CPU work: off the loop
    all_runs: list[tuple[list[int], gen.ChoiceRun]] = []
    try:
        for prompt in prompts:
            gen.check_prompt(model, prompt, state.settings.max_prompt_tokens)
            params = [req.engine_params(req.max_tokens, req.logprobs, choice=i) for i in range(req.n)]
            for run in gen.start_choices(model, prompt, params, stop_list(req.stop)):
                all_runs.append((prompt, run))
    except Exception:
        for _, run in all_runs:
            run.request.cancel()
        raise
    for index, (_, run) in enumerate(all_runs):
        run.index = index
    runs = [r for _, r in all_runs]
    cid, created = new_id("cmpl"), now()
    echo_text = [model.tokenizer.decode(p) if req.echo else "" for p, _ in all_runs]
    if req.stream:
        return StreamingResponse(_stream(req, model, all_runs, echo_text, cid, created, state),
                                 media_type="text/event-stream")
    await gen.collect(runs, http)
    gen.record(state.metrics, model.name, runs)
    choices = [
        CompletionChoice(
            index=run.index, text=echo_text[run.index] + run.result.text,
            logprobs=_logprobs(model, prompt, run, req.echo) if req.logprobs is not None else None,
            finish_reason=gen.finish_reason(run.result),
        )
        for prompt, run in all_runs
    ]
    prompt_tokens = sum(len(p) for p in prompts)
    completion_tokens = sum(r.result.completion_tokens for r in runs)
    body = Completion(id=cid, created=created, model=req.model, choices=choices,
                      usage={"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                             "total_tokens": prompt_tokens + completion_tokens})
    return JSONResponse(body.model_dump(mode="json"))


async def _stream(req, model, all_runs, echo_text, cid, created, state) -> AsyncIterator[str]:
    def chunk(index: int, text: str, reason: str | None) -> str:
        choice = CompletionChoice(index=index, text=text, logprobs=None, finish_reason=reason)
        return gen.sse(Completion(id=cid, created=created, model=req.model, choices=[choice]).model_dump(mode="json"))

    runs = [r for _, r in all_runs]
    for r in runs:
        if echo_text[r.index]:
            yield chunk(r.index, echo_text[r.index], None)
    async for run, delta in gen.merged_deltas(runs):
        if delta is None:
            yield chunk(run.index, "", gen.finish_reason(run.result))
        elif delta.text:
            yield chunk(run.index, delta.text, None)
    gen.record(state.metrics, model.name, runs)
    if req.stream_options and req.stream_options.include_usage:
        prompt_tokens = sum(len(p) for p, r in all_runs if r.index % req.n == 0)
        completion_tokens = sum(r.result.completion_tokens for r in runs)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
        yield gen.sse(Completion(id=cid, created=created, model=req.model, choices=[], usage=usage).model_dump(mode="json"))
    yield gen.sse("[DONE]")
