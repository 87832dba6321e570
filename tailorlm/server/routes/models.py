"""GET /v1/models and /v1/models/{id}: every model in the store."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends

from tailorlm.server.protocol.models import ModelCard, ModelList
from tailorlm.server.state import ServerState, get_state
from tailorlm.store import Manifest

router = APIRouter()


def _card(m: Manifest) -> ModelCard:
    try:
        created = int(datetime.fromisoformat(m.created_at).timestamp())
    except (TypeError, ValueError):
        created = 0
    return ModelCard(id=m.name, created=created)


@router.get("/v1/models")
def list_models(state: ServerState = Depends(get_state)) -> dict:
    return ModelList(data=[_card(m) for m in state.registry.manifests()]).model_dump(mode="json")


@router.get("/v1/models/{model_id:path}")
def get_model(model_id: str, state: ServerState = Depends(get_state)) -> dict:
    return _card(state.registry.manifest(model_id)).model_dump(mode="json")
