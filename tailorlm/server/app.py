"""The app factory: `build_app(settings)` wires state, middleware, error mapping and routers."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from tailorlm import __version__
from tailorlm.config import Settings, get_settings
from tailorlm.db import connect
from tailorlm.server import errors
from tailorlm.server.auth import KeyStore
from tailorlm.server.metrics import Metrics
from tailorlm.server.middleware import GuardMiddleware
from tailorlm.server.registry import ModelRegistry
from tailorlm.server.routes import embeddings, generate, health, models
from tailorlm.server.state import ServerState

log = logging.getLogger("tailorlm.server")


def build_state(settings: Settings) -> ServerState:
    registry = ModelRegistry(settings)
    return ServerState(settings, registry, Metrics(registry.stats), KeyStore(connect(settings.db_path)))


async def _preload(state: ServerState) -> None:
    """Warm the default model so the first request does not pay for loading it."""
    try:
        await state.registry.get(state.settings.default_model)
    except Exception as exc:  # not in the store, or broken: requests will say why
        log.info("default model not preloaded: %s", exc)


def build_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    state = build_state(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        warm = asyncio.create_task(_preload(state))
        yield
        warm.cancel()
        state.registry.close_all()  # cancels whatever is still in flight

    app = FastAPI(title="tailorlm", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.tailor = state
    errors.install(app)
    for router in (health.router, models.router, generate.router, embeddings.router):
        app.include_router(router)
    app.add_middleware(GuardMiddleware, state=state)
    return app
