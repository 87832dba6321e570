"""The scheduler: continuous batching over the slot cache, one synchronous `step()` at a time.

Each step first spends up to `prefill_budget` prompt tokens on prefill, then decodes one token
for every request that was already running, in a single forward. Prompts that fit the budget are
prefilled whole and join at once; a longer one is prefilled a chunk per step, so running requests
keep getting a token every step meanwhile. At most one request is partially prefilled at a time;
it holds the slot right after the running ones. Requests join and leave between steps.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch

from tailorlm.engine.backend import Runner
from tailorlm.engine.prefix_cache import PrefixCache
from tailorlm.engine.sampling import RowState, SampleResult, sample
from tailorlm.engine.types import SamplingParams, TokenEvent
from tailorlm.errors import ContextOverflowError, InvalidRequestError

log = logging.getLogger(__name__)

Sink = Callable[[TokenEvent], None]


@dataclass
class Request:
    """A request as the scheduler sees it: ids in, ids out."""

    id: str
    prompt: list[int]
    params: SamplingParams
    sink: Sink
    max_tokens: int
    row: RowState
    adapter: str | None = None  # a LoRA adapter loaded into the runner; None: the base model
    slot: int = -1
    output: list[int] = field(default_factory=list)
    arrived: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None

    @property
    def length(self) -> int:
        """Tokens whose keys/values are in the cache."""
        return len(self.prompt) + len(self.output) - 1


class EngineCore:
    """Token-level continuous-batching scheduler. Not thread-safe: one caller drives `step()`."""

    def __init__(self, make_runner: Callable[[], Runner], *, vocab_size: int, context_length: int,
                 eos_token_ids: list[int], max_batch: int, prefill_budget: int = 512,
                 prefix_cache_bytes: int = 0, kv_budget_bytes: int = 0) -> None:
        # The runner is built on first use, i.e. in the thread that will run it (see RunnerFactory).
        self._runner: Runner | None = None
        self._make_runner = make_runner
        self.vocab_size = vocab_size
        self.context_length = context_length
        self.eos_token_ids = set(eos_token_ids)
        self.max_batch = max_batch
        self.prefill_budget = prefill_budget
        # most KV-cache memory (0: no limit): a request starts only while every running request could reach
        # its full length (prompt + max_tokens) within it; until then it waits (see `_kv_admits`)
        self.kv_budget_bytes = kv_budget_bytes
        # prompt prefixes' keys/values, reused by later requests (where the runner's capabilities say so)
        self.prefix_cache = PrefixCache(prefix_cache_bytes) if prefix_cache_bytes > 0 else None
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # running[i].slot == i
        self.prefilling: Request | None = None  # partially prefilled, in slot len(running)
        self.prefilled = 0  # prompt tokens of `prefilling` in the cache
        self.by_id: dict[str, Request] = {}
        self.steps = 0

    @property
    def runner(self) -> Runner:
        if self._runner is None:
            self._runner = self._make_runner()
        return self._runner

    # -- admission ---------------------------------------------------------------------
    def make_request(self, request_id: str, prompt: list[int], params: SamplingParams, sink: Sink,
                     adapter: str | None = None) -> Request:
        """Validate and build a request; raises before anything is queued."""
        if not prompt:
            raise InvalidRequestError("The prompt is empty: give at least one token.", param="prompt")
        if min(prompt) < 0 or max(prompt) >= self.vocab_size:
            raise InvalidRequestError(
                f"The prompt holds a token id outside the vocabulary (0..{self.vocab_size - 1}).", param="prompt"
            )
        params.validate(self.vocab_size)
        room = self.context_length - len(prompt)
        max_tokens = params.max_tokens if params.max_tokens is not None else room
        if max_tokens < 1 or len(prompt) + max_tokens > self.context_length:
            raise ContextOverflowError(len(prompt), max(max_tokens, 1), self.context_length)
        row = RowState.create(params, prompt, self.vocab_size)
        return Request(request_id, list(prompt), params, sink, max_tokens, row, adapter)

    def add(self, req: Request) -> None:
        if req.id in self.by_id:
            raise InvalidRequestError(f"request id {req.id} is already in use.", param="request_id")
        if req.adapter is not None and req.adapter not in self.runner.lora:  # unloaded since it was submitted
            req.sink(TokenEvent(req.id, None, finish_reason="error", error=f"adapter {req.adapter} is not loaded"))
            return
        self.by_id[req.id] = req
        self.waiting.append(req)

    @torch.inference_mode()
    def abort(self, request_id: str, error: str | None = None) -> bool:
        """Drop a request now, freeing its slot (ending it with `error` if given); False when it already finished."""
        req = self.by_id.get(request_id)
        if req is None:
            return False
        if req.slot >= 0:
            self._release(req)
        else:
            self.waiting.remove(req)
            self.by_id.pop(req.id, None)
        req.sink(TokenEvent(req.id, None, finish_reason="error", error=error) if error
                 else TokenEvent(req.id, None, finish_reason="abort"))
        return True

    def unload_adapter(self, name: str) -> None:
        """Remove adapter `name` from the runner; requests still using it end with an error."""
        users = [r for r in self.by_id.values() if r.adapter == name]
        for req in users:
            if req.slot < 0:
                self.waiting.remove(req)
                self.by_id.pop(req.id, None)
        self._fail(users, RuntimeError(f"adapter {name} was unloaded"))
        if name in self.runner.lora:
            self.runner.lora.remove(name)
        if self.prefix_cache is not None:
            self.prefix_cache.clear()

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.prefilling)

    # -- the step ----------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> None:
        """Prefill up to the budget, then decode one token for every request running before it."""
        self.steps += 1
        budget = max(self.prefill_budget, 1)
        decoding = list(self.running)
        while budget > 0:
            if self.prefilling is None:
                if not self.waiting or len(self.running) >= self.max_batch or not self._kv_admits():
                    break
                self.prefilling, self.prefilled = self.waiting.popleft(), 0
                self.prefilling.slot = len(self.running)
                self._reserve_burst()
            budget -= self._prefill(budget)
        if decoding:
            self._decode(decoding)

    def _kv_admits(self) -> bool:
        """Whether the next waiting request may start: the cache, grown so that it and every running request
        reach their full lengths, stays within the KV budget. One that cannot fit even alone fails now."""
        peak = self.runner.kv_peak_bytes if self.runner.capabilities.kv_budget else None
        while self.kv_budget_bytes and peak is not None and self.waiting:
            req = self.waiting[0]
            spans = [len(r.prompt) + r.max_tokens for r in (*self.running, req)]
            if peak(len(spans), max(spans)) <= self.kv_budget_bytes:
                return True
            if self.running:
                return False  # it waits for running requests to finish
            self.waiting.popleft()
            self.by_id.pop(req.id, None)
            alone = peak(1, spans[-1]) / 2**20
            self._fail([req], InvalidRequestError(
                f"this request needs {alone:,.0f} MiB of KV cache at its full length ({spans[-1]} tokens), more than "
                f"the {self.kv_budget_bytes / 2**20:,.0f} MiB budget (kv_cache_mb): lower max_tokens or the prompt"))
        return bool(self.waiting)

    def _reserve_burst(self) -> None:
        """Make the cache's slots once for everything about to run: the running requests, the one starting now
        and those waiting behind it (up to max_batch), where the KV budget holds them.

        Without it a burst of N requests grows the cache log2(N) times, each growth a copy of the whole cache
        and fresh memory to fault in (seconds on some VMs), between the steps of the requests already running.
        Positions are reserved only as far as the prompts reach: a generous max_tokens must not allocate the
        whole context for every slot (the cache grows in blocks of positions as requests get longer).
        """
        if not self.runner.capabilities.kv_budget:
            return
        batch = [*self.running, self.prefilling, *self.waiting][: self.max_batch]
        length = max(len(r.prompt) + len(r.output) for r in batch)
        slots = len(batch)  # as many of them as the budget holds (the rest grow the cache when admitted)
        while self.kv_budget_bytes and slots > 1 and self.runner.kv_peak_bytes(slots, length) > self.kv_budget_bytes:
            slots -= 1
        self.runner.reserve(slots, length)

    def _prefill(self, budget: int) -> int:
        """Prefill the next chunk (at most `budget` tokens) of `prefilling`; return the tokens spent.

        After its last chunk the request samples its first token and joins `running`, from the slot it holds.
        """
        req, start = self.prefilling, self.prefilled
        cache = self.prefix_cache if self.runner.capabilities.prefix_cache else None
        try:
            if start == 0 and cache is not None:
                start = self.runner.write_kv(req.slot, 0, cache.match(req.prompt, req.adapter))
            end = min(len(req.prompt), start + budget)
            logits = self.runner.prefill(req.slot, req.prompt[start:end], start, adapter=req.adapter)
            self.prefilled = end
            if end < len(req.prompt):
                return end - start
            if cache is not None:
                cache.add(req.prompt, req.adapter, lambda a, b: self.runner.read_kv(req.slot, a, b))
        except Exception as exc:  # a fault in one request must not take the engine down
            log.exception("prefill failed for %s", req.id)
            self._fail([req], exc)
            return 0
        self.prefilling = None
        self.running.append(req)
        self._emit([req], sample(logits[-1:], [req.row]))
        return end - start

    def _decode(self, reqs: list[Request]) -> None:
        # Requests admitted during this step already got their first token from prefill.
        reqs = [r for r in reqs if r.slot >= 0]
        if not reqs:
            return
        assert [r.slot for r in reqs] == list(range(len(reqs)))
        try:
            logits = self.runner.decode([r.output[-1] for r in reqs], [r.length for r in reqs],
                                        [r.adapter for r in reqs])
        except Exception as exc:
            log.exception("decode step failed")
            self._fail(reqs, exc)
            return
        self._emit(reqs, sample(logits, [r.row for r in reqs]))

    def _emit(self, reqs: list[Request], result: SampleResult) -> None:
        now = time.monotonic()
        done: list[tuple[Request, str]] = []
        for i, req in enumerate(reqs):
            tok = result.tokens[i]
            req.output.append(tok)
            if req.first_token_at is None:
                req.first_token_at = now
            reason = None
            stops = req.params.stop_token_ids
            if (tok in self.eos_token_ids and not req.params.ignore_eos) or tok in stops:
                reason = "stop"
            elif len(req.output) >= req.max_tokens:
                reason = "length"
            req.sink(TokenEvent(req.id, tok, result.logprobs[i], result.top_logprobs[i], reason))
            if reason:
                done.append((req, reason))
        for req, _ in done:
            self._release(req)

    def _fail(self, reqs: list[Request], exc: Exception) -> None:
        for req in reqs:
            if req.slot >= 0:
                self._release(req)
            req.sink(TokenEvent(req.id, None, finish_reason="error", error=f"{type(exc).__name__}: {exc}"))

    def reset(self, exc: Exception) -> None:
        """Last resort after an unexpected fault: fail every request and start clean."""
        reqs = list(self.by_id.values())
        self.waiting.clear()
        self.running.clear()
        self.prefilling = None
        self.by_id.clear()
        for req in reqs:
            req.slot = -1
            req.sink(TokenEvent(req.id, None, finish_reason="error", error=f"{type(exc).__name__}: {exc}"))

    def _release(self, req: Request) -> None:
        """Free req's slot; the last running request, then the partial one, move down to stay contiguous."""
        if req is self.prefilling:
            self.prefilling = None
        else:
            last = self.running.pop()
            if last is not req:
                self._move(last, req.slot, last.length)
                self.running[req.slot] = last
            if self.prefilling is not None:
                self._move(self.prefilling, len(self.running), self.prefilled)
        req.slot = -1
        self.by_id.pop(req.id, None)

    def _move(self, req: Request, slot: int, length: int) -> None:
        self.runner.move_slot(req.slot, slot, length)
        req.slot = slot
