"""/v1/fine_tuning/jobs: the create request, the job, its events and checkpoints (their lists: pagination.py).

Hyperparameters are `tailorlm.tune.jobs.Hyperparameters`: OpenAI's three knobs plus our
`tuning` (lora|full) and `lora_rank`, accepted in either place OpenAI takes them; a dpo job's are
`DPOHyperparameters` (OpenAI's `beta` besides), under `method.dpo` only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from tailorlm.errors import InvalidRequestError
from tailorlm.server.protocol.common import OpenAIRequest, OpenAIResponse
from tailorlm.tune.jobs import HYPERPARAMETERS, DPOHyperparameters, Hyperparameters, Method

if TYPE_CHECKING:
    from tailorlm.tune.jobs import Checkpoint, Event, Job

Auto = Literal["auto"]
MetadataMap = dict[Annotated[str, StringConstraints(max_length=64)], Annotated[str, StringConstraints(max_length=512)]]


# -- the request ----------------------------------------------------------------------------------
class SupervisedConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hyperparameters: Hyperparameters | None = None


class DPOConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hyperparameters: DPOHyperparameters | None = None


class MethodRequest(BaseModel):
    """`method`: `supervised` and `dpo` train here; other types' bodies (reinforcement) are kept just to refuse them."""

    model_config = ConfigDict(extra="allow")
    type: str
    supervised: SupervisedConfig | None = None
    dpo: DPOConfig | None = None


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

    def resolved_method(self) -> tuple[Method, Hyperparameters]:
        """The method and its hyperparameters, from `method.<type>` or (supervised) the deprecated top-level field."""
        if self.integrations:
            raise InvalidRequestError(
                "integrations (Weights & Biases) are not supported: tailorlm records metrics itself, "
                "see the job's events and checkpoints; omit `integrations`", param="integrations")
        if self.method is None:
            return "supervised", self.hyperparameters or Hyperparameters()
        kind = self.method.type
        if kind not in HYPERPARAMETERS:
            raise InvalidRequestError(
                f"method.type {kind!r} is not supported: 'supervised' and 'dpo' fine-tuning are", param="method.type")
        for other in HYPERPARAMETERS:
            if other != kind and getattr(self.method, other) is not None:
                raise InvalidRequestError(f"method.{other} configures method type {other!r}, but method.type is "
                                          f"{kind!r}", param=f"method.{other}")
        config = getattr(self.method, kind)
        nested = config.hyperparameters if config is not None else None
        if self.hyperparameters is not None:
            if kind != "supervised":
                raise InvalidRequestError(f"the top-level hyperparameters (deprecated) are for supervised jobs; give "
                                          f"this job's in method.{kind}.hyperparameters", param="hyperparameters")
            if nested is not None:
                raise InvalidRequestError(
                    "hyperparameters were given both at the top level and in method.supervised; "
                    "give them once, in method.supervised", param="hyperparameters")
        return kind, nested or self.hyperparameters or HYPERPARAMETERS[kind]()


# -- the job --------------------------------------------------------------------------------------
# The spec's job status has no `paused` (OpenAI's own pause example answers with one): a paused job is reported as
# `queued` — not finished, not training, and it trains again from its checkpoint once resumed — and the
# job's newest event says that it is paused and at which step (docs/decisions.md).
REPORTED = {"paused": "queued"}

class JobError(OpenAIResponse):
    code: str
    message: str
    param: str | None


class JobHyperparameters(OpenAIResponse):
    n_epochs: int | Auto
    batch_size: int | Auto
    learning_rate_multiplier: float | Auto


class JobDPOHyperparameters(JobHyperparameters):
    beta: float | Auto


class SupervisedMethod(OpenAIResponse):
    hyperparameters: JobHyperparameters


class DPOMethod(OpenAIResponse):
    hyperparameters: JobDPOHyperparameters


class JobMethod(OpenAIResponse):
    omit_if_none = frozenset({"supervised", "dpo"})

    type: Literal["supervised", "dpo"]
    supervised: SupervisedMethod | None = None
    dpo: DPOMethod | None = None

    @classmethod
    def from_record(cls, job: Job) -> Self:
        hp = job.hyperparameters.openai()
        if job.method == "dpo":
            return cls(type="dpo", dpo=DPOMethod(hyperparameters=JobDPOHyperparameters(**hp)))
        return cls(type="supervised", supervised=SupervisedMethod(hyperparameters=JobHyperparameters(**hp)))


class FineTuningJob(OpenAIResponse):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    model: str
    training_file: str
    validation_file: str | None
    status: Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]  # see REPORTED
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

    @classmethod
    def from_record(cls, job: Job) -> Self:
        common = Hyperparameters.openai(job.hyperparameters)  # OpenAI's three, whatever the method
        return cls(id=job.id, created_at=job.created_at, model=job.model, training_file=job.training_file,
                   validation_file=job.validation_file, status=REPORTED.get(job.status, job.status), error=job.error,
                   fine_tuned_model=job.fine_tuned_model, finished_at=job.finished_at,
                   estimated_finish=job.estimated_finish, trained_tokens=job.trained_tokens,
                   result_files=list(job.result_files), hyperparameters=JobHyperparameters(**common),
                   method=JobMethod.from_record(job), seed=job.seed,
                   organization_id="org-local", integrations=[], metadata=job.metadata,
                   user_provided_suffix=job.suffix)


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

    @classmethod
    def from_record(cls, e: Event) -> Self:
        return cls(id=e.id, created_at=e.created_at, level=e.level, type=e.type, message=e.message, data=e.data)


class FineTuningJobCheckpoint(OpenAIResponse):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    fine_tuning_job_id: str
    created_at: int
    step_number: int
    metrics: dict[str, float]
    fine_tuned_model_checkpoint: str

    @classmethod
    def from_record(cls, c: Checkpoint) -> Self:
        return cls(id=c.id, fine_tuning_job_id=c.job_id, created_at=c.created_at, step_number=c.step_number,
                   metrics=c.metrics, fine_tuned_model_checkpoint=c.fine_tuned_model_checkpoint)
