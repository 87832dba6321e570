"""POST /v1/embeddings with the server's embedding model (also answering to OpenAI's `text-embedding-*`)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from tailorlm.embeddings import EmbeddingModels
from tailorlm.server.protocol.embeddings import EmbeddingRequest
from tailorlm.server.serving import embeddings
from tailorlm.server.state import ServerState, get_state

router = APIRouter()


async def get_embedding_models(state: ServerState = Depends(get_state)) -> EmbeddingModels:
    """The app's embedding models (shared with its knowledge bases)."""
    return state.embeddings


@router.post("/v1/embeddings")
async def create_embeddings(
    body: EmbeddingRequest,
    state: ServerState = Depends(get_state),
    models: EmbeddingModels = Depends(get_embedding_models),
):
    return await embeddings.create(body, state, models)
