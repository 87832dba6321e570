"""What a preset holds: the model it runs on, its instructions, its default parameters, its knowledge."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tailorlm.errors import InvalidRequestError

class GenerationDefaults(BaseModel):
    """Chat request fields a preset may give defaults for (a request's own value always wins)."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0, le=10)


GENERATION_DEFAULTS = tuple(GenerationDefaults.model_fields)
_MAX_TOKENS = ("max_tokens", "max_completion_tokens")


class KnowledgeRef(BaseModel):
    """A knowledge base a preset retrieves from: `k` chunks per question, optional OpenAI-style filters."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    k: int = Field(4, ge=1, le=50)
    filters: dict[str, Any] | None = None
    mode: str = Field("hybrid", pattern="^(hybrid|vector|keyword)$")


class Preset(BaseModel):
    """One version of a preset, as stored in `HOME/presets/<name>/<version>.yaml`."""

    model_config = ConfigDict(extra="forbid")

    name: str
    version: int = 0  # assigned by the store
    model: str = Field(min_length=1)  # a base model in the store
    adapter: str | None = None  # an adapter (`ft:` name) over `model`
    system: str | None = None
    # A system message of the request itself: appended after the preset's (default: the organization's
    # instructions always hold, the client adds to them), or it replaces them.
    client_system: Literal["append", "replace"] = "append"
    parameters: dict[str, Any] = Field(default_factory=dict)
    knowledge: list[KnowledgeRef] = Field(default_factory=list)
    description: str | None = None
    created_at: int = 0

    @field_validator("parameters")
    @classmethod
    def _known_parameters(cls, value: dict[str, Any]) -> dict[str, Any]:
        """Checked like a request's fields; only the ones set are kept."""
        return GenerationDefaults.model_validate(value).model_dump(exclude_none=True)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def target(self) -> str:
        """The model a chat runs on: the adapter if there is one, else the base."""
        return self.adapter or self.model

    def defaults_for(self, given: set[str]) -> dict[str, Any]:
        """The preset's parameters a request did not set itself (either token limit counts as set)."""
        return {k: v for k, v in self.parameters.items()
                if k not in given and not (k in _MAX_TOKENS and given & set(_MAX_TOKENS))}

    @classmethod
    def parse(cls, data: dict[str, Any]) -> "Preset":
        """Validate user-written data (a YAML file), with one readable error."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "preset"
            raise InvalidRequestError(f"invalid preset: {where}: {first['msg']}", param=where) from None
