"""Running the app under uvicorn with a clean shutdown: in-flight requests get `graceful_timeout`
seconds to finish, then their generations are cancelled so every stream still ends properly
(a final chunk and `data: [DONE]`), never cut mid-response."""

from __future__ import annotations

import asyncio
import logging

import uvicorn
from fastapi import FastAPI

log = logging.getLogger("tailorlm.server")
MARGIN_SECONDS = 5  # after cancelling, time for streams to write their last chunks


def show_logs(level: str) -> None:
    """tailorlm's own log lines (which dtype a model loads in, loads and unloads) beside uvicorn's, alike."""
    from uvicorn.logging import DefaultFormatter

    logger = logging.getLogger("tailorlm")
    if logger.handlers or logging.getLogger().handlers:  # configured already (by the embedding app, or pytest)
        return
    handler = logging.StreamHandler()
    handler.setFormatter(DefaultFormatter("%(levelprefix)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level.upper())


class TailorServer(uvicorn.Server):
    def __init__(self, app: FastAPI, *, host: str, port: int, graceful_timeout: float, log_level: str = "info"):
        show_logs(log_level)
        super().__init__(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                        timeout_graceful_shutdown=int(graceful_timeout + MARGIN_SECONDS)))
        self.tailor_app = app
        self.graceful_timeout = graceful_timeout

    async def shutdown(self, sockets=None) -> None:
        registry = self.tailor_app.state.tailor.registry

        async def cancel_late() -> None:
            await asyncio.sleep(self.graceful_timeout)
            stats = registry.stats()
            if any(s["running"] or s["waiting"] for s in stats.values()):
                log.info("graceful timeout: cancelling in-flight generations")
                registry.abort_all()

        timer = asyncio.create_task(cancel_late())
        try:
            await super().shutdown(sockets)
        finally:
            timer.cancel()
