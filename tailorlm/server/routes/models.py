"""GET /v1/models and /v1/models/{id}: every model, LoRA adapter and preset in the store."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends

from tailorlm.presets import Preset
from tailorlm.errors import PermissionDeniedError
from tailorlm.server.protocol.models import DeleteModelResponse, ModelCard, ModelList
from tailorlm.server.state import ServerState, get_state
from tailorlm.store import AdapterManifest, Manifest

router = APIRouter()


def _card(m: Manifest | AdapterManifest) -> ModelCard:
    try:
        created = int(datetime.fromisoformat(m.created_at).timestamp())
    except (TypeError, ValueError):
        created = 0
    return ModelCard(id=m.name, created=created, owned_by="user" if isinstance(m, AdapterManifest) else "tailorlm")


def _preset_card(p: Preset, ref: str | None = None) -> ModelCard:
    """A preset as a model; `ref` is the name it was asked for ("name" or "name@2")."""
    return ModelCard(id=ref or p.name, created=p.created_at, owned_by="user")


def _embedding_card(state: ServerState) -> ModelCard:
    return ModelCard(id=state.settings.embedding_model, created=0)


@router.get("/v1/models")
def list_models(state: ServerState = Depends(get_state)) -> dict:
    cards = [_card(m) for m in state.registry.manifests()] + [_embedding_card(state)]
    cards += [_preset_card(p) for p in state.registry.presets.list()]
    return ModelList(data=cards).model_dump(mode="json")


@router.get("/v1/models/{model_id:path}")
def get_model(model_id: str, state: ServerState = Depends(get_state)) -> dict:
    if model_id == state.settings.embedding_model:
        return _embedding_card(state).model_dump(mode="json")
    found = state.registry.resolve(model_id)
    if found.preset is not None:
        return _preset_card(found.preset, model_id).model_dump(mode="json")
    if found.adapter is not None:
        return _card(found.adapter).model_dump(mode="json")
    if found.manifest is None:  # the embedded default, not pulled yet: not a model of this server until it is
        state.registry.store.get(found.model)
    return _card(found.manifest).model_dump(mode="json")


@router.delete("/v1/models/{model_id:path}")
def delete_model(model_id: str, state: ServerState = Depends(get_state)) -> dict:
    """Delete a fine-tuned model (an `ft:` adapter), as OpenAI allows; base models, exports and presets are
    removed from the command line (`tailor rm`, `tailor preset rm`). Requests still using it end with an error."""
    found = state.registry.resolve(model_id)  # 404 for an unknown name
    if found.adapter is None or found.preset is not None or not found.adapter.name.startswith("ft:"):
        raise PermissionDeniedError(f"only fine-tuned models (ft:...) can be deleted over the API; {model_id} is "
                                    "not one (remove it with the tailor command on the server)", param="model")
    state.registry.forget_adapter(found.adapter.name)
    state.registry.adapters.remove(found.adapter.name)
    return DeleteModelResponse(id=found.adapter.name).model_dump(mode="json")
