"""POST /v1/embeddings: encode the inputs with the server's embedding model (routes/embeddings.py, batch lines)."""

from __future__ import annotations

import asyncio

from fastapi import Response

from tailorlm.embeddings import EmbeddingModels
from tailorlm.server.protocol.embeddings import CreateEmbeddingResponse, EmbeddingRequest
from tailorlm.server.state import ServerState


async def create(body: EmbeddingRequest, state: ServerState, models: EmbeddingModels) -> Response:
    name = models.resolve(body.model)
    inputs = body.inputs()
    batcher = await asyncio.to_thread(models.get, name)  # loads on the first request only
    body.check_dimensions(batcher.model.dim, name)
    seqs = await asyncio.to_thread(batcher.model.encode, inputs)  # tokenize + validate, off the loop
    vectors = await batcher.embed(seqs)
    tokens = sum(len(s) for s in seqs)
    state.metrics.prompt_tokens.labels(name).inc(tokens)
    response = CreateEmbeddingResponse.build(name, vectors, body.encoding_format, tokens)
    # Serialised by pydantic-core directly: ~15x faster than FastAPI's jsonable_encoder on 2048 x 384 floats.
    return Response(response.model_dump_json(), media_type="application/json")
