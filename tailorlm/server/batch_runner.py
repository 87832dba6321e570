"""Runs batches in the server process, on the engines interactive requests use, one line at a time.

One asyncio task (started by the app's lifespan) takes the oldest active batch and runs its next line that has
no result, through the same serving function the endpoint's route calls; the result is written to SQLite before
the next line starts. At most one batch line is ever in flight, so interactive requests share the engine with a
single low-priority sequence. Once every line has a result, the output and error files are written from the
rows; a cancelled batch writes what had completed. A batch whose window (`expires_at`) closes before every line
has a result stops there, the line in flight dropped: it ends `expired`, its answered lines in its files and the
others in its error file as batch_expired. A restarted server picks up where the rows say it stopped; a line that
was in flight at the stop has no result and runs again, a line with one never does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING

from tailorlm.batches import BatchRecord, LineResult

if TYPE_CHECKING:
    from tailorlm.server.state import ServerState

log = logging.getLogger("tailorlm.server")


class BatchRunner:
    def __init__(self, state: ServerState) -> None:
        self.state = state
        self._task: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._line: tuple[str, asyncio.Task] | None = None  # (batch id, the line in flight)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="batch-runner")

    async def stop(self) -> None:
        """Cancel the line in flight (it keeps no result, so it runs again on the next start) and stop."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def wake(self) -> None:
        """Look for work now (a batch was created or cancelled); safe from any thread."""
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def cancelled(self, batch_id: str) -> None:
        """`batch_id` is now cancelling: drop its line in flight rather than wait for it."""
        def drop() -> None:
            if self._line is not None and self._line[0] == batch_id:
                self._line[1].cancel()
            assert self._wake is not None
            self._wake.set()

        if self._loop is not None:
            self._loop.call_soon_threadsafe(drop)

    async def _run(self) -> None:
        assert self._wake is not None
        store = self.state.batches
        while True:
            self._wake.clear()
            try:
                batch = store.next_active()
                if batch is None:
                    await self._wake.wait()
                elif (batch.status == "in_progress" and not batch.expired
                      and (line := store.next_line(batch.id)) is not None):
                    await self._run_line(batch, line)
                else:
                    await self._finalize(batch)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug or a full disk: logged, and tried again shortly rather than spinning
                log.exception("the batch runner failed; retrying in 5 s")
                await asyncio.sleep(5)

    async def _run_line(self, batch: BatchRecord, line) -> None:
        from tailorlm.server.serving import batch_lines  # serving imports the state, which names this module

        task = asyncio.create_task(batch_lines.run(batch.endpoint, line, self.state))
        self._line = (batch.id, task)
        window = None if batch.expires_at is None else max(0.0, batch.expires_at - time.time())
        try:
            await asyncio.wait({task}, timeout=window)
        finally:
            self._line = None
            task.cancel()  # when the window closed first, or this runner itself is being stopped
        await asyncio.gather(task, return_exceptions=True)
        if not task.cancelled():  # a line dropped (cancelled batch, closed window) keeps no result
            self.state.batches.record(batch.id, task.result())

    async def _finalize(self, batch: BatchRecord) -> None:
        """Write the output and error files from the rows, then end the batch (`completed`, `expired` when lines
        were left when its window closed, or `cancelled`)."""
        store = self.state.batches
        if batch.status == "in_progress":
            if not store.set_status(batch.id, "finalizing", only_from=("in_progress",)):
                return  # cancelled meanwhile: the next turn sees it
        if batch.status != "cancelling":  # a finalizing batch has lines left only when its window closed
            await asyncio.to_thread(store.expire_unrun, batch.id)
        results = await asyncio.to_thread(store.results, batch.id)
        ok = [r for r in results if r.status_code == 200]
        bad = [r for r in results if r.status_code != 200]
        output = await asyncio.to_thread(self._write, batch.id, "output", ok)
        errors = await asyncio.to_thread(self._write, batch.id, "error", bad)
        end = "cancelled" if batch.status == "cancelling" else \
            "expired" if any(r.status_code is None for r in bad) else "completed"
        store.set_status(batch.id, end, only_from=(batch.status if end == "cancelled" else "finalizing",),
                         output_file_id=output, error_file_id=errors)
        log.info("batch %s %s: %d completed, %d failed or expired", batch.id, end, len(ok), len(bad))

    def _write(self, batch_id: str, kind: str, results: list[LineResult]) -> str | None:
        if not results:
            return None
        lines = (json.dumps(r.output(), ensure_ascii=False).encode() + b"\n" for r in results)
        return self.state.files.add(lines, f"{batch_id}_{kind}.jsonl", "batch_output").id
