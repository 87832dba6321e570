"""/v1/fine_tuning/jobs: create, list, retrieve, cancel, events, checkpoints.

Creating a job only records it (status `validating_files`); the server's JobSupervisor runs it
in a worker process, so training never blocks serving.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request

from tailorlm.errors import InvalidRequestError, NotFoundError, TailorError
from tailorlm.files import FileStore
from tailorlm.runtime.resolve import base_model
from tailorlm.server.protocol.fine_tuning import (
    CreateFineTuningJobRequest,
    FineTuningJob,
    FineTuningJobCheckpoint,
    FineTuningJobEvent,
    ListFineTuningJobCheckpointsResponse,
    ListFineTuningJobEventsResponse,
    ListPaginatedFineTuningJobsResponse,
)
from tailorlm.server.state import ServerState, get_state

router = APIRouter()
JOBS = "/v1/fine_tuning/jobs"


def _training_file(files: FileStore, file_id: str, param: str) -> str:
    """`file_id` if it names an uploaded file with purpose fine-tune, else a 400 naming `param`."""
    try:
        record = files.get(file_id)
    except NotFoundError:
        raise InvalidRequestError(f"invalid {param}: no uploaded file has the id {file_id!r}", param=param) from None
    if record.purpose != "fine-tune":
        raise InvalidRequestError(
            f"invalid {param}: {file_id} was uploaded with purpose {record.purpose!r}, not 'fine-tune'", param=param)
    return record.id


@router.post(JOBS)
def create_job(body: CreateFineTuningJobRequest, state: ServerState = Depends(get_state)) -> dict:
    hyperparameters = body.resolved_hyperparameters()
    try:
        model = base_model(body.model, state.settings, "fine-tuning").name
    except TailorError as exc:  # not in the store (404 model_not_found), or not a possible name (400)
        exc.param = "model"
        raise
    training = _training_file(state.files, body.training_file, "training_file")
    validation = _training_file(state.files, body.validation_file, "validation_file") if body.validation_file else None
    job = state.jobs.create(model, training, validation, hyperparameters, suffix=body.suffix, seed=body.seed,
                            metadata=body.metadata)
    state.supervisor.wake()
    return FineTuningJob.of(job).model_dump(mode="json")


@router.get(JOBS)
def list_jobs(request: Request, after: str | None = None, limit: int = Query(20, ge=1, le=100),
              state: ServerState = Depends(get_state)) -> dict:
    # OpenAI's `metadata` filter arrives as `metadata[key]=value` query parameters
    metadata = {k[len("metadata["):-1]: v for k, v in request.query_params.items()
                if k.startswith("metadata[") and k.endswith("]")}
    jobs, has_more = state.jobs.list(after=after, limit=limit, metadata=metadata)
    page = ListPaginatedFineTuningJobsResponse(data=[FineTuningJob.of(j) for j in jobs], has_more=has_more)
    return page.model_dump(mode="json")


@router.get(JOBS + "/{job_id}")
def retrieve_job(job_id: str, state: ServerState = Depends(get_state)) -> dict:
    return FineTuningJob.of(state.jobs.get(job_id)).model_dump(mode="json")


@router.post(JOBS + "/{job_id}/cancel")
def cancel_job(job_id: str, state: ServerState = Depends(get_state)) -> dict:
    """A job that has not started is cancelled at once; a running one stops at its next step."""
    job = state.jobs.request_cancel(job_id)
    state.supervisor.wake()
    return FineTuningJob.of(job).model_dump(mode="json")


@router.get(JOBS + "/{job_id}/events")
def list_events(job_id: str, after: str | None = None, limit: int = Query(20, ge=1, le=100),
                state: ServerState = Depends(get_state)) -> dict:
    events, has_more = state.jobs.events(job_id, after=after, limit=limit)
    page = ListFineTuningJobEventsResponse(data=[FineTuningJobEvent.of(e) for e in events], has_more=has_more)
    return page.model_dump(mode="json")


@router.get(JOBS + "/{job_id}/checkpoints")
def list_checkpoints(job_id: str, after: str | None = None, limit: int = Query(10, ge=1, le=100),
                     state: ServerState = Depends(get_state)) -> dict:
    checkpoints, has_more = state.jobs.checkpoints(job_id, after=after, limit=limit)
    page = ListFineTuningJobCheckpointsResponse.build([FineTuningJobCheckpoint.of(c) for c in checkpoints], has_more)
    return page.model_dump(mode="json")
