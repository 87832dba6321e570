"""Async side of the engine: engine events delivered into the event loop, cancel on exit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from tailorlm.engine import SamplingParams, TokenEvent
from tailorlm.runtime import OpenModel


class AsyncRequest:
    """Submit at construction (so validation errors raise before any response starts)."""

    def __init__(self, model: OpenModel, prompt: list[int], params: SamplingParams) -> None:
        loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[TokenEvent] = asyncio.Queue()
        self.finished = False
        self.handle = model.submit(prompt, params, sink=lambda e: loop.call_soon_threadsafe(self.queue.put_nowait, e))

    async def events(self) -> AsyncIterator[TokenEvent]:
        try:
            while not self.finished:
                event = await self.queue.get()
                if event.finish_reason is not None:
                    self.finished = True
                yield event
        finally:
            self.cancel()

    def cancel(self) -> None:
        """Free the slot now (a disconnected client, a stop string, shutdown)."""
        if not self.finished:
            self.finished = True
            self.handle.cancel()
