"""What the server holds for background responses (`background: true`): the task running each one, and the event
log of each streamed one. What a background response does is serving/background.py's; this module only keeps its
tasks apart, cancels them, and lets any number of clients follow a stream from any sequence number.

An event reaches followers only once it is in SQLite (`EventLog`: a writer task stores what has accumulated, then
publishes it), so whatever a client has seen survives a crash, and a stream resumed after any sequence number
continues exactly where that client was. At shutdown the runs get `graceful_timeout` seconds to end, then are
cancelled as they stand: a restarted server decides what becomes of them (serving/background.py `recover`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import TYPE_CHECKING, Any

from tailorlm.responses import ResponseStore

if TYPE_CHECKING:
    from tailorlm.server.state import ServerState

log = logging.getLogger("tailorlm.server")
Event = dict[str, Any]


class EventLog:
    """The numbered events of one streamed background response: appended by its run, stored in batches (as many
    as have come while the last batch was written), published to followers once stored."""

    def __init__(self, store: ResponseStore, response_id: str, stored: list[Event]) -> None:
        self.store, self.id = store, response_id
        self.published: list[Event] = list(stored)  # everything stored so far, from sequence number 0
        self.next = len(stored)
        self._pending: list[Event] = []
        self._changed = asyncio.Condition()
        self._dirty = asyncio.Event()
        self._closing = False
        self.closed = False
        self._writer = asyncio.create_task(self._write(), name=f"events-{response_id}")

    def add(self, event: Event) -> Event:
        """Number `event` and queue it for storing; the numbered event."""
        numbered = {**event, "sequence_number": self.next}
        self.next += 1
        self._pending.append(numbered)
        self._dirty.set()
        return numbered

    async def close(self) -> None:
        """Store what is queued, then end every follower's stream."""
        self._closing = True
        self._dirty.set()
        await asyncio.wait({self._writer})  # not gather: a cancelled caller must not cancel the last write

    async def _write(self) -> None:
        try:
            while True:
                await self._dirty.wait()
                self._dirty.clear()
                batch, self._pending = self._pending, []
                if batch:
                    await asyncio.to_thread(self.store.add_events, self.id, batch)
                    self.published += batch
                    await self._notify()
                if self._closing and not self._pending:
                    return
        except Exception:  # a full disk, a deleted response: followers end rather than wait forever
            log.exception("could not store the events of response %s", self.id)
        finally:
            self.closed = True
            await asyncio.shield(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def follow(self, after: int) -> AsyncIterator[Event]:
        """The events numbered after `after`, as they are stored, until the log closes."""
        i = max(0, after + 1)
        while True:
            while i < len(self.published):
                yield self.published[i]
                i += 1
            if self.closed:
                return
            async with self._changed:
                await self._changed.wait_for(lambda: i < len(self.published) or self.closed)


class BackgroundResponses:
    """The runs of background responses in this process, by response id."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self._tasks: dict[str, asyncio.Task] = {}
        self._logs: dict[str, EventLog] = {}
        self._cancelling: set[str] = set()
        self._recovery: asyncio.Task | None = None

    def start(self) -> None:
        """Take up the background responses the last server left unfinished (in a task: models load meanwhile)."""
        from tailorlm.server.serving import background  # serving imports the state, which names this module

        self._recovery = asyncio.create_task(background.recover(self.state), name="background-recovery")

    async def open_log(self, response_id: str) -> EventLog:
        """The event log of a streamed response, with what was stored of it before (a recovered one's)."""
        stored = await asyncio.to_thread(self.state.responses.events, response_id)
        self._logs[response_id] = log_ = EventLog(self.state.responses, response_id, stored)
        return log_

    def spawn(self, response_id: str, run: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(run, name=f"response-{response_id}")
        self._tasks[response_id] = task
        task.add_done_callback(lambda _: self._forget(response_id, task))

    def _forget(self, response_id: str, task: asyncio.Task) -> None:
        if self._tasks.get(response_id) is task:
            del self._tasks[response_id]
            self._logs.pop(response_id, None)
            self._cancelling.discard(response_id)

    def running(self, response_id: str) -> bool:
        return response_id in self._tasks

    def cancelling(self, response_id: str) -> bool:
        """Whether the run of `response_id` is being cancelled by a client (not by shutdown)."""
        return response_id in self._cancelling

    async def cancel(self, response_id: str) -> bool:
        """Cancel the run of `response_id` and wait until it has recorded that; False if none runs here."""
        task = self._tasks.get(response_id)
        if task is None:
            return False
        self._cancelling.add(response_id)
        task.cancel()
        await asyncio.wait({task})
        return True

    async def follow(self, response_id: str, after: int) -> AsyncIterator[Event]:
        """The events of a streamed response numbered after `after`: live while it runs, else as stored."""
        live = self._logs.get(response_id)
        if live is not None:
            async for event in live.follow(after):
                yield event
            return
        for event in await asyncio.to_thread(self.state.responses.events, response_id, after):
            yield event

    async def stop(self) -> None:
        """Give the runs `graceful_timeout` seconds, then cancel what is left (a restarted server takes it up)."""
        if self._recovery is not None:
            self._recovery.cancel()
            await asyncio.gather(self._recovery, return_exceptions=True)
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.wait(tasks, timeout=self.state.settings.graceful_timeout)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
