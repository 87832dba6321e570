"""The engine: an `EngineCore` driven by one background thread, fed from any thread.

Callers `submit()` token ids and get a `RequestHandle` whose events arrive as the scheduler
produces them; `cancel()` frees the request's slot before the next step. The engine knows
tokens only: no text, no HTTP.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import queue
import threading
import time
from collections.abc import Iterator
from typing import Callable

import torch

from tailorlm.engine.core import EngineCore
from tailorlm.engine.loader import LoadedModel
from tailorlm.engine.lora import linear_features, lora_from_peft
from tailorlm.engine.types import SamplingParams, TokenEvent
from tailorlm.errors import ModelNotFoundError, QueueFullError, UnsupportedModelError

log = logging.getLogger(__name__)


class RequestHandle:
    """What `submit` returns: iterate it for events; `cancel()` to stop early."""

    def __init__(self, engine: "Engine", request_id: str, prompt_tokens: int) -> None:
        self.engine = engine
        self.id = request_id
        self.prompt_tokens = prompt_tokens
        self.queue: queue.SimpleQueue[TokenEvent] = queue.SimpleQueue()
        self.finish_reason: str | None = None

    def __iter__(self) -> Iterator[TokenEvent]:
        while self.finish_reason is None:
            try:  # a timeout keeps the wait interruptible by Ctrl-C
                event = self.queue.get(timeout=0.2)
            except queue.Empty:
                continue
            if event.finish_reason is not None:
                self.finish_reason = event.finish_reason
            yield event

    def cancel(self) -> None:
        if self.finish_reason is None:
            self.engine.abort(self.id)

    def tokens(self) -> list[int]:
        """Run to completion and return the generated ids (stop tokens included)."""
        return [e.token_id for e in self if e.token_id is not None]


class Engine:
    """Thread-safe front of the scheduler for one loaded model."""

    def __init__(self, loaded: LoadedModel, *, max_batch: int = 32, prefill_budget: int = 512,
                 max_waiting: int | None = None, prefix_cache_bytes: int = 0, kv_budget_bytes: int = 0) -> None:
        self.max_waiting = max_waiting
        self.loaded = loaded
        self.name = loaded.name
        self.capabilities = loaded.runner_factory.capabilities
        self.core = EngineCore(
            lambda: loaded.runner_factory(max_batch, loaded.context_length), vocab_size=loaded.vocab_size, context_length=loaded.context_length,
            eos_token_ids=loaded.eos_token_ids, max_batch=max_batch, prefill_budget=prefill_budget,
            prefix_cache_bytes=prefix_cache_bytes, kv_budget_bytes=kv_budget_bytes,
        )
        self._inbox: queue.SimpleQueue[tuple[str, object]] = queue.SimpleQueue()
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._pending = 0  # submitted and not yet finished (waiting or running)
        self._adapters: dict[str, str] = {}  # LoRA adapter name -> version, as submit sees them
        # read now, before the engine thread swaps layers (a runner that serves adapters runs a transformers model)
        self._linear_features = linear_features(loaded.model) if self.capabilities.lora else None

    @property
    def context_length(self) -> int:
        return self.loaded.context_length

    @property
    def eos_token_ids(self) -> list[int]:
        return self.loaded.eos_token_ids

    # -- public API (any thread) ---------------------------------------------------------
    def submit(self, prompt: list[int], params: SamplingParams | None = None, *,
               adapter: str | None = None, request_id: str | None = None,
               sink: Callable[[TokenEvent], None] | None = None) -> RequestHandle:
        """Queue a request, through LoRA `adapter` if set; validation errors (context overflow,
        bad params, an adapter not loaded) raise here."""
        params = params or SamplingParams()
        if adapter is not None and adapter not in self._adapters:
            raise ModelNotFoundError(f"adapter {adapter} is not loaded into {self.name}")
        rid = request_id or f"req-{next(self._ids)}"
        handle = RequestHandle(self, rid, len(prompt))
        target = handle.queue.put if sink is None else sink

        def deliver(event: TokenEvent) -> None:
            if event.finish_reason is not None:
                with self._lock:
                    self._pending -= 1
            target(event)

        req = self.core.make_request(rid, prompt, params, deliver, adapter)
        if self.max_waiting is not None and self._pending >= self.max_waiting + self.core.max_batch:
            raise QueueFullError(
                f"the server is busy: {self._pending} requests are in flight for {self.name}; retry shortly",
                retry_after=1,
            )
        with self._lock:
            self._pending += 1
        self._ensure_thread()
        self._inbox.put(("add", req))
        return handle

    def load_adapter(self, name: str, tensors: dict[str, torch.Tensor], config: dict, *, version: str = "") -> None:
        """Serve PEFT LoRA adapter `name` (its adapter_config.json as `config`) from the next step on.

        Checked here, against this model's layers; installed by the engine thread between steps, before any
        request submitted afterwards. Loading a name again replaces its weights. `version` is the caller's tag.
        """
        if not self.capabilities.lora:
            raise UnsupportedModelError(
                f"{self.name} runs on the {self.loaded.backend} backend, which serves no LoRA adapters at runtime; "
                f"export the adapter merged into its base instead (`tailor export {name}`)")
        weights = lora_from_peft(config, tensors, self._linear_features, self.loaded.model.dtype)
        with self._lock:
            self._adapters[name] = version
        self._ensure_thread()
        self._inbox.put(("load_adapter", (name, weights)))

    def unload_adapter(self, name: str) -> None:
        """Stop serving `name`; its requests still in flight end with an error."""
        with self._lock:
            if self._adapters.pop(name, None) is None:
                raise ModelNotFoundError(f"adapter {name} is not loaded into {self.name}")
        self._ensure_thread()
        self._inbox.put(("unload_adapter", name))

    @property
    def adapters(self) -> dict[str, str]:
        """Loaded adapter name -> the version it was loaded with."""
        return dict(self._adapters)

    def abort(self, request_id: str) -> None:
        self._inbox.put(("abort", request_id))

    def abort_all(self) -> None:
        self._inbox.put(("abort_all", None))

    def generate(self, prompt: list[int], params: SamplingParams | None = None) -> list[TokenEvent]:
        """Blocking convenience: all events of one request."""
        return list(self.submit(prompt, params))

    def stats(self) -> dict[str, int]:
        running = len(self.core.running)
        return {"running": running, "waiting": max(self._pending - running, 0), "steps": self.core.steps}

    def wait_idle(self, timeout: float) -> bool:
        """Block until no request is in flight (or `timeout` seconds pass); True if idle."""
        deadline = time.monotonic() + timeout
        while self._pending > 0:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def shutdown(self, reason: str | None = None) -> None:
        """Stop the thread; requests still in flight end at once, with an error saying `reason` when given
        (their clients see why, never a normal finish), else as aborted."""
        if self._thread is not None and self._thread.is_alive():
            self._inbox.put(("stop", reason))
            self._thread.join(timeout=30)
        atexit.unregister(self.shutdown)

    # -- the loop ------------------------------------------------------------------------
    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name=f"engine-{self.name}", daemon=True)
                self._thread.start()
                atexit.register(self.shutdown)

    def _handle(self, cmd: str, arg: object) -> bool:
        if cmd == "add":
            self.core.add(arg)  # type: ignore[arg-type]
        elif cmd == "abort":
            self.core.abort(arg)  # type: ignore[arg-type]
        elif cmd == "load_adapter":
            self.core.runner.lora.add(*arg)  # type: ignore[misc]
            if self.core.prefix_cache is not None:  # keys/values computed through an older version are stale
                self.core.prefix_cache.clear()
        elif cmd == "unload_adapter":
            self.core.unload_adapter(arg)  # type: ignore[arg-type]
        elif cmd in ("stop", "abort_all"):
            for rid in list(self.core.by_id):
                self.core.abort(rid, error=arg)  # type: ignore[arg-type]
            return cmd != "stop"
        return True

    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            try:
                if not self.core.has_work():
                    if not self._handle(*self._inbox.get()):
                        return
                while True:
                    try:
                        cmd = self._inbox.get_nowait()
                    except queue.Empty:
                        break
                    if not self._handle(*cmd):
                        return
                if self.core.has_work():
                    self.core.step()
            except Exception as exc:  # keep serving: fail what was in flight, start clean
                log.exception("engine loop error")
                self.core.reset(exc)
