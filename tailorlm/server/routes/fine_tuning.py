"""/v1/fine_tuning/jobs: create, list, retrieve, cancel, pause, resume, events, checkpoints.

Creating a job records it (status `validating_files`) once its files' lines have the structure its method
trains on; the server's JobSupervisor runs it in a worker process, so training never blocks serving.
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
)
from tailorlm.server.protocol.pagination import CursorPage, ListPage, PageQuery, page
from tailorlm.server.state import ServerState, get_state
from tailorlm.tune.data import check_file, require_method
from tailorlm.tune.jobs import Method

router = APIRouter()
JOBS = "/v1/fine_tuning/jobs"


def _training_file(files: FileStore, file_id: str, param: str, method: Method) -> str:
    """`file_id` if it names an uploaded file with purpose fine-tune whose lines `method` can train on (their
    structure: the tokens are counted by the worker), else a 400 naming `param` (and the line and field)."""
    try:
        record = files.get(file_id)
    except NotFoundError:
        raise InvalidRequestError(f"invalid {param}: no uploaded file has the id {file_id!r}", param=param) from None
    if record.purpose != "fine-tune":
        raise InvalidRequestError(
            f"invalid {param}: {file_id} was uploaded with purpose {record.purpose!r}, not 'fine-tune'", param=param)
    require_method(check_file(files.path(record.id), None, None), method, param, record.id)
    return record.id


@router.post(JOBS)
def create_job(body: CreateFineTuningJobRequest, state: ServerState = Depends(get_state)) -> dict:
    method, hyperparameters = body.resolved_method()
    try:
        model = base_model(body.model, state.settings, "fine-tuning").name
    except TailorError as exc:  # not in the store (404 model_not_found), or not a possible name (400)
        exc.param = "model"
        raise
    training = _training_file(state.files, body.training_file, "training_file", method)
    validation = (_training_file(state.files, body.validation_file, "validation_file", method)
                  if body.validation_file else None)
    job = state.jobs.create(model, training, validation, hyperparameters, suffix=body.suffix, seed=body.seed,
                            metadata=body.metadata, method=method)
    state.supervisor.wake()
    return FineTuningJob.from_record(job).model_dump(mode="json")


@router.get(JOBS)
def list_jobs(request: Request, after: str | None = None, limit: int = Query(20, ge=1, le=100),
              state: ServerState = Depends(get_state)) -> dict:
    # OpenAI's `metadata` filter arrives as `metadata[key]=value` query parameters
    metadata = {k[len("metadata["):-1]: v for k, v in request.query_params.items()
                if k.startswith("metadata[") and k.endswith("]")}
    window, more = page(state.jobs.list(), PageQuery(limit, "desc", after or None),  # an empty `after` is none
                        keep=lambda j: all((j.metadata or {}).get(k) == v for k, v in metadata.items()),
                        missing="No fine-tuning job with id {!r}".format)
    return ListPage.build([FineTuningJob.from_record(j) for j in window], more).model_dump(mode="json")


@router.get(JOBS + "/{job_id}")
def retrieve_job(job_id: str, state: ServerState = Depends(get_state)) -> dict:
    return FineTuningJob.from_record(state.jobs.get(job_id)).model_dump(mode="json")


@router.post(JOBS + "/{job_id}/cancel")
def cancel_job(job_id: str, state: ServerState = Depends(get_state)) -> dict:
    """A job that has not started is cancelled at once; a running one stops at its next step."""
    job = state.jobs.request_cancel(job_id)
    state.supervisor.wake()
    return FineTuningJob.from_record(job).model_dump(mode="json")


@router.post(JOBS + "/{job_id}/pause")
def pause_job(job_id: str, state: ServerState = Depends(get_state)) -> dict:
    """A job that has not started is paused at once; a running one stops at its next step, with a checkpoint."""
    job = state.jobs.request_pause(job_id)
    state.supervisor.wake()
    return FineTuningJob.from_record(job).model_dump(mode="json")


@router.post(JOBS + "/{job_id}/resume")
def resume_job(job_id: str, state: ServerState = Depends(get_state)) -> dict:
    """A paused job is queued again and continues from its last checkpoint."""
    job = state.jobs.request_resume(job_id)
    state.supervisor.wake()
    return FineTuningJob.from_record(job).model_dump(mode="json")


@router.get(JOBS + "/{job_id}/events")
def list_events(job_id: str, after: str | None = None, limit: int = Query(20, ge=1, le=100),
                state: ServerState = Depends(get_state)) -> dict:
    window, more = page(state.jobs.events(job_id), PageQuery(limit, "desc", after or None),
                        missing="No event with id {!r}".format)
    return ListPage.build([FineTuningJobEvent.from_record(e) for e in window], more).model_dump(mode="json")


@router.get(JOBS + "/{job_id}/checkpoints")
def list_checkpoints(job_id: str, after: str | None = None, limit: int = Query(10, ge=1, le=100),
                     state: ServerState = Depends(get_state)) -> dict:
    window, more = page(state.jobs.checkpoints(job_id), PageQuery(limit, "desc", after or None),
                        missing="No checkpoint with id {!r}".format)
    return CursorPage.build([FineTuningJobCheckpoint.from_record(c) for c in window], more).model_dump(mode="json")
