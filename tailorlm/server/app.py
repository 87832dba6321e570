"""The app factory: `build_app(settings)` wires state, middleware, error mapping and routers."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from tailorlm import __version__
from tailorlm.batches import BatchStore
from tailorlm.config import Settings, get_settings
from tailorlm.db import connect
from tailorlm.embeddings import EmbeddingModels
from tailorlm.files import FileStore
from tailorlm.server import errors
from tailorlm.server.auth import KeyStore
from tailorlm.server.background_responses import BackgroundResponses
from tailorlm.server.batch_runner import BatchRunner
from tailorlm.server.jobs_supervisor import JobSupervisor
from tailorlm.server.knowledge import Knowledge
from tailorlm.server.metrics import Metrics
from tailorlm.server.middleware import GuardMiddleware
from tailorlm.server.registry import ModelRegistry
from tailorlm.responses import ResponseStore
from tailorlm.server.routes import (
    batches,
    embeddings,
    files,
    fine_tuning,
    generate,
    health,
    models,
    responses,
    vector_stores,
)
from tailorlm.server.state import ServerState
from tailorlm.tune.jobs import JobStore

log = logging.getLogger("tailorlm.server")


def build_state(settings: Settings) -> ServerState:
    registry = ModelRegistry(settings)
    db = connect(settings.db_path)
    jobs = JobStore(db)
    files = FileStore(db, settings.files_dir, settings.max_upload_bytes)
    embeddings = EmbeddingModels(settings.embedding_model)
    state = ServerState(settings, registry, Metrics(registry.stats), KeyStore(db), files, jobs,
                        JobSupervisor(settings, jobs), Knowledge(settings, files, embeddings), embeddings,
                        ResponseStore(db), BatchStore(connect(settings.db_path)), None, None)  # type: ignore[arg-type]
    state.batch_runner = BatchRunner(state)
    state.background = BackgroundResponses(state)
    return state


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
        warm = asyncio.create_task(_preload(state)) if settings.preload else None
        state.supervisor.start()
        state.batch_runner.start()
        state.background.start()  # background responses the last server left unfinished
        await asyncio.to_thread(state.knowledge.resume)  # files added before the last stop, not yet ingested
        yield
        if warm is not None:
            warm.cancel()
        await state.background.stop()  # graceful_timeout to end, then cut short as they stand (recover)
        await state.batch_runner.stop()  # before the engines close: a line cut short keeps no result
        await asyncio.to_thread(state.supervisor.stop)  # a running job checkpoints and is requeued
        state.registry.close_all()  # cancels whatever is still in flight
        await asyncio.to_thread(state.knowledge.close)  # lets a running ingestion finish its transaction

    app = FastAPI(title="tailorlm", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.tailor = state
    errors.install(app)
    for router in (health.router, models.router, generate.router, responses.router, embeddings.router, files.router,
                   fine_tuning.router, vector_stores.router, batches.router):
        app.include_router(router)
    app.add_middleware(GuardMiddleware, state=state)
    return app
