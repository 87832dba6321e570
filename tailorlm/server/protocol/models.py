"""GET /v1/models."""

from __future__ import annotations

from typing import Literal

from tailorlm.server.protocol.common import Deletion, OpenAIResponse


class ModelCard(OpenAIResponse):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tailorlm"


class ModelList(OpenAIResponse):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class DeleteModelResponse(Deletion):
    object: Literal["model"] = "model"
