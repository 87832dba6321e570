"""Sampling fields shared by chat and text completions, and their mapping to engine params."""

from __future__ import annotations

from pydantic import BaseModel, Field

from tailorlm.engine import SamplingParams
from tailorlm.errors import InvalidRequestError


class SamplingFields(BaseModel):
    """OpenAI's sampling parameters, plus the common open-model extensions (top_k, min_p, repetition_penalty)."""

    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0, le=10)
    ignore_eos: bool = False  # extension (as vLLM): keep generating past EOS, for benchmarks

    def engine_params(self, max_tokens: int | None, logprobs: int | None, choice: int = 0) -> SamplingParams:
        """Engine params for choice `choice` (seeded choices differ but stay reproducible)."""
        bias: dict[int, float] = {}
        for key, value in (self.logit_bias or {}).items():
            try:
                bias[int(key)] = float(value)
            except ValueError:
                raise InvalidRequestError(f"logit_bias keys must be token ids, got {key!r}.", param="logit_bias") from None
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=self.top_k or 0,
            min_p=self.min_p or 0.0,
            seed=None if self.seed is None else self.seed + choice,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            repetition_penalty=self.repetition_penalty or 1.0,
            logit_bias=bias,
            logprobs=logprobs,
            ignore_eos=self.ignore_eos,
        )
