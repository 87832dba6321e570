"""Async front of an EmbeddingModel: requests that arrive while a forward runs share the next one."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np

from tailorlm.embeddings.model import EmbeddingModel


class Batcher:
    """One worker task per event loop drains the queue: everything waiting goes into one `embed_ids` call,
    run in a thread so that the loop stays free. A request that is cancelled only loses its own result."""

    def __init__(self, model: EmbeddingModel) -> None:
        self.model = model
        self._pending: list[tuple[Sequence[Sequence[int]], asyncio.Future]] = []
        self._worker: asyncio.Task | None = None
        self.forwards = 0  # embed_ids calls made (for tests and metrics)

    async def embed(self, seqs: Sequence[Sequence[int]]) -> np.ndarray:
        """Sequences from `model.encode` (already validated) → float32 [len(seqs), dim]."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        self._pending.append((seqs, future))
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            flat = [s for seqs, _ in batch for s in seqs]
            self.forwards += 1
            try:
                vectors = await asyncio.to_thread(self.model.embed_ids, flat)
            except Exception as exc:  # a fault, not a user error: inputs were validated before queueing
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            offset = 0
            for seqs, future in batch:
                if not future.done():
                    future.set_result(vectors[offset:offset + len(seqs)])
                offset += len(seqs)
