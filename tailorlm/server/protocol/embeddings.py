"""POST /v1/embeddings: request and response, shaped as OpenAI's CreateEmbeddingRequest/Response."""

from __future__ import annotations

import base64
from typing import Any, Literal

import numpy as np
from pydantic import StrictInt, StrictStr, ValidationError, ValidatorFunctionWrapHandler, field_validator

from tailorlm.errors import InvalidRequestError
from tailorlm.server.protocol.common import OpenAIRequest, OpenAIResponse

MAX_INPUTS = 2048  # OpenAI's limit on the items of one request


class EmbeddingRequest(OpenAIRequest):
    model: str
    input: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]  # strict: no '1' → 1 coercion
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None

    @field_validator("input", mode="wrap")
    @classmethod
    def _one_clear_error(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """One message instead of pydantic's four (one per member of the union)."""
        try:
            return handler(value)
        except ValidationError:
            raise ValueError("input must be a string, an array of strings, an array of integers (token ids) "
                             "or an array of arrays of integers") from None

    def inputs(self) -> list[str] | list[list[int]]:
        """Always a list of items: one string or one token array becomes a list of one."""
        inp = self.input
        if isinstance(inp, str):
            return [inp]
        if not inp:
            raise InvalidRequestError("input must not be empty.", param="input")
        if isinstance(inp[0], int):
            return [inp]  # type: ignore[list-item]
        if len(inp) > MAX_INPUTS:
            raise InvalidRequestError(f"input may hold at most {MAX_INPUTS} items, not {len(inp)}.", param="input")
        return inp

    def check_dimensions(self, dim: int, model: str) -> None:
        """The vectors cannot be shortened (the model is not trained for it): only its own size is accepted."""
        if self.dimensions is not None and self.dimensions != dim:
            raise InvalidRequestError(
                f"dimensions must be {dim} for {model} (its vectors cannot be shortened), not {self.dimensions}.",
                param="dimensions")


class Embedding(OpenAIResponse):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # str: base64 of little-endian float32


class EmbeddingUsage(OpenAIResponse):
    prompt_tokens: int
    total_tokens: int


class CreateEmbeddingResponse(OpenAIResponse):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage

    @classmethod
    def build(cls, model: str, vectors: np.ndarray, encoding_format: str, prompt_tokens: int) -> "CreateEmbeddingResponse":
        if encoding_format == "base64":
            items = [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in vectors]
        else:
            items = vectors.astype(np.float32).tolist()
        return cls(
            data=[Embedding(index=i, embedding=e) for i, e in enumerate(items)],
            model=model,
            usage=EmbeddingUsage(prompt_tokens=prompt_tokens, total_tokens=prompt_tokens),
        )
