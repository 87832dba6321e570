"""GET /health and GET /metrics (Prometheus text format); neither needs an API key."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from tailorlm.server.state import ServerState, get_state

router = APIRouter()


@router.get("/health")
def health(state: ServerState = Depends(get_state)) -> dict:
    return {"status": "ok", "loaded_models": state.registry.loaded()}


@router.get("/metrics")
def metrics(state: ServerState = Depends(get_state)) -> Response:
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
