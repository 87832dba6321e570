"""/v1/fine_tuning/jobs: the create request, the job, its events and checkpoints (their lists: pagination.py).

Hyperparameters are `tailorlm.tune.jobs.Hyperparameters`: OpenAI's three knobs plus our
`tuning` (lora|full) and `lora_rank`, accepted in either place OpenAI takes them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from tailorlm.errors import InvalidRequestError
from tailorlm.server.protocol.common import OpenAIRequest, OpenAIResponse
from tailorlm.tune.jobs import Hyperparameters

Auto = Literal["auto"]
MetadataMap = dict[Annotated[str, StringConstraints(max_length=64)], Annotated[str, StringConstraints(max_length=512)]]


# -- the request ----------------------------------------------------------------------------------
class SupervisedConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hyperparameters: Hyperparameters | None = None


class MethodRequest(BaseModel):
    """`method`: only `supervised` trains here; the other types' bodies are kept just to refuse them."""

    model_config = ConfigDict(extra="allow")
    type: str
    supervised: SupervisedConfig | None = None


class CreateFineTuningJobRequest(OpenAIRequest):
    model: str
    training_file: str
    validation_file: str | None = None
    hyperparameters: Hyperparameters | None = None  # deprecated by OpenAI in favour of `method`
    method: MethodRequest | None = None
    suffix: str | None = Field(None, max_length=64)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    metadata: MetadataMap | None = Field(None, max_length=16)
    integrations: list[dict[str, Any]] | None = None

    def resolved_hyperparameters(self) -> Hyperparameters:
        """The hyperparameters from `method.supervised` or the deprecated top-level field."""
        if self.integrations:
            raise InvalidRequestError(
                "integrations (Weights & Biases) are not supported: tailorlm records metrics itself, "
                "see the job's events and checkpoints; omit `integrations`", param="integrations")
        if self.method is None:
            return self.hyperparameters or Hyperparameters()
        if self.method.type != "supervised":
            raise InvalidRequestError(
                f"method.type {self.method.type!r} is not supported: only 'supervised' fine-tuning is",
                param="method.type")
        nested = self.method.supervised.hyperparameters if self.method.supervised else None
        if nested is not None and self.hyperparameters is not None:
            raise InvalidRequestError(
                "hyperparameters were given both at the top level and in method.supervised; "
                "give them once, in method.supervised", param="hyperparameters")
        return nested or self.hyperparameters or Hyperparameters()


# -- the job --------------------------------------------------------------------------------------
class JobError(OpenAIResponse):
    code: str
    message: str
    param: str | None


class JobHyperparameters(OpenAIResponse):
    n_epochs: int | Auto
    batch_size: int | Auto
    learning_rate_multiplier: float | Auto


class SupervisedMethod(OpenAIResponse):
    hyperparameters: JobHyperparameters


class JobMethod(OpenAIResponse):
    type: Literal["supervised"] = "supervised"
    supervised: SupervisedMethod


class FineTuningJob(OpenAIResponse):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    model: str
    training_file: str
    validation_file: str | None
    status: Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
    error: JobError | None
    fine_tuned_model: str | None
    finished_at: int | None
    estimated_finish: int | None
    trained_tokens: int | None
    result_files: list[str]
    hyperparameters: JobHyperparameters
    method: JobMethod
    seed: int
    organization_id: str
    integrations: list[dict[str, Any]] | None
    metadata: dict[str, str] | None
    user_provided_suffix: str | None


# -- events and checkpoints -----------------------------------------------------------------------
class FineTuningJobEvent(OpenAIResponse):
    omit_if_none = frozenset({"data"})

    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    type: Literal["message", "metrics"]
    message: str
    data: dict[str, Any] | None = None


class FineTuningJobCheckpoint(OpenAIResponse):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    fine_tuning_job_id: str
    created_at: int
    step_number: int
    metrics: dict[str, float]
    fine_tuned_model_checkpoint: str
