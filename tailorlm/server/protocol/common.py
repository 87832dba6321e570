"""Base classes shared by every resource's protocol models."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_serializer, model_validator

from tailorlm import __version__
from tailorlm.errors import InvalidRequestError

log = logging.getLogger("tailorlm.server")
FINGERPRINT = f"fp_tailorlm_{__version__}"


def unpaired_surrogate(value: Any, path: str = "") -> str | None:
    """The path (e.g. `messages[0].content`) of the first string in `value` holding a lone UTF-16 surrogate
    (JSON may spell one, `"\\ud800"`, but it is not text: tokenizers and encoders fail on it); None if none."""
    if isinstance(value, str):
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return path
        return None
    if isinstance(value, dict):
        items = ((f"{path}.{k}" if path else str(k), v) for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for where, item in items:
        found = unpaired_surrogate(item, where)
        if found is not None:
            return found
    return None


class OpenAIRequest(BaseModel):
    """Requests keep unknown fields (newer clients send more than we know) and log them once each; a string
    that is not valid Unicode (a lone surrogate) is a 400 naming its field, before any field is read."""

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        where = unpaired_surrogate(data)
        if where is not None:
            raise InvalidRequestError(f"{where or 'the request'} holds an unpaired UTF-16 surrogate (such as "
                                      "\\ud800), which is not text: send valid Unicode", param=where or None)
        return data

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

