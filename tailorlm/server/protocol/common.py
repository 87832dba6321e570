"""Base classes shared by every resource's protocol models."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_serializer, model_validator

from tailorlm import __version__

log = logging.getLogger("tailorlm.server")
FINGERPRINT = f"fp_tailorlm_{__version__}"


class OpenAIRequest(BaseModel):
    """Requests keep unknown fields (newer clients send more than we know) and log them once each."""

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="after")
    def _log_unknown(self) -> "OpenAIRequest":
        if self.model_extra:
            log.info("ignoring unknown fields in %s: %s", type(self).__name__, sorted(self.model_extra))
        return self


class OpenAIResponse(BaseModel):
    """Responses: fields listed in `omit_if_none` are left out when None (OpenAI omits them);
    every other field is always present, null included, as the spec requires. An object built from a
    store's record (StoredFile, Job, KnowledgeBase, …) has a `from_record` classmethod; records know no OpenAI."""

    model_config = ConfigDict(extra="forbid")
    omit_if_none: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _omit(self, handler: Any) -> Any:
        data = handler(self)
        for key in self.omit_if_none:
            if data.get(key) is None:
                data.pop(key, None)
        return data


class Usage(OpenAIResponse):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class StreamOptions(BaseModel):
    include_usage: bool = False


class Deletion(OpenAIResponse):
    """A deletion receipt; each resource's names its own `object` ("file", "vector_store.deleted", …)."""

    id: str
    object: str
    deleted: bool = True


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def stop_list(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)

