"""Token-level request and result types shared by the scheduler, sampler and callers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from tailorlm.errors import InvalidRequestError

MAX_LOGPROBS = 20


class TokenConstraint(Protocol):
    """Limits which tokens may come next (a grammar, a JSON schema...). Called from the engine thread."""

    def allowed(self) -> torch.Tensor:
        """Bool tensor over (at least) the vocabulary: True where the next token may be."""

    def accept(self, token_id: int) -> None:
        """Advance past the token that was picked."""


@dataclass
class SamplingParams:
    """How one request picks its tokens. `temperature == 0` means greedy."""

    max_tokens: int | None = None  # None: up to the context length
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 (or -1): no top-k cut
    min_p: float = 0.0
    seed: int | None = None
    repetition_penalty: float = 1.0  # HF/vLLM style, over prompt and output tokens
    presence_penalty: float = 0.0  # OpenAI style, over output tokens
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None  # None: none; 0: the chosen token's; k: plus the top k
    constraint: TokenConstraint | None = None  # structured output; one object per request

    def validate(self, vocab_size: int) -> None:
        """Raise InvalidRequestError naming the first bad parameter."""
        checks = [
            (self.max_tokens is None or self.max_tokens >= 1, "max_tokens", "must be at least 1"),
            (0.0 <= self.temperature <= 100.0, "temperature", "must be between 0 and 100"),
            (0.0 < self.top_p <= 1.0, "top_p", "must be in (0, 1]"),
            (self.top_k >= -1, "top_k", "must be -1, 0 or positive"),
            (0.0 <= self.min_p <= 1.0, "min_p", "must be in [0, 1]"),
            (0.0 < self.repetition_penalty <= 10.0, "repetition_penalty", "must be in (0, 10]"),
            (-2.0 <= self.presence_penalty <= 2.0, "presence_penalty", "must be between -2 and 2"),
            (-2.0 <= self.frequency_penalty <= 2.0, "frequency_penalty", "must be between -2 and 2"),
            (
                self.logprobs is None or 0 <= self.logprobs <= MAX_LOGPROBS,
                "logprobs",
                f"must be between 0 and {MAX_LOGPROBS}",
            ),
        ]
        for ok, param, why in checks:
            if not ok:
                raise InvalidRequestError(f"{param} {why}, got {getattr(self, param)!r}.", param=param)
        for tok, bias in self.logit_bias.items():
            if not (0 <= int(tok) < vocab_size):
                raise InvalidRequestError(f"logit_bias names token {tok}, outside the vocabulary.", param="logit_bias")
            if not (-100.0 <= bias <= 100.0):
                raise InvalidRequestError(f"logit_bias for token {tok} must be in [-100, 100].", param="logit_bias")
        for tok in self.stop_token_ids:
            if not (0 <= tok < vocab_size):
                raise InvalidRequestError(f"stop token {tok} is outside the vocabulary.", param="stop_token_ids")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def uses_penalties(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


@dataclass(frozen=True)
class TokenEvent:
    """One generated token, or the end of a request (`finish_reason` set).

    finish_reason: "stop" (EOS or a stop token; `token_id` is that token), "length"
    (max_tokens reached), "abort" (cancelled; `token_id` is None) or "error".
    """

    request_id: str
    token_id: int | None
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] = ()
    finish_reason: str | None = None
    error: str | None = None

    @property
    def is_stop_token(self) -> bool:
        return self.finish_reason == "stop" and self.token_id is not None
