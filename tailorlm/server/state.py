"""What every route needs, built once per app: settings, models, metrics, API keys, files, jobs, knowledge,
stored responses and the runs of background ones, batches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import Request

from tailorlm.batches import BatchStore

from tailorlm.config import Settings
from tailorlm.embeddings import EmbeddingModels
from tailorlm.files import FileStore
from tailorlm.responses import ResponseStore
from tailorlm.server.auth import KeyStore
from tailorlm.server.jobs_supervisor import JobSupervisor
from tailorlm.server.knowledge import Knowledge
from tailorlm.server.metrics import Metrics
from tailorlm.server.registry import ModelRegistry
from tailorlm.tune.jobs import JobStore

if TYPE_CHECKING:
    from tailorlm.server.background_responses import BackgroundResponses
    from tailorlm.server.batch_runner import BatchRunner


@dataclass
class ServerState:
    settings: Settings
    registry: ModelRegistry
    metrics: Metrics
    keys: KeyStore
    files: FileStore
    jobs: JobStore
    supervisor: JobSupervisor  # runs fine-tuning jobs in worker processes
    knowledge: Knowledge  # knowledge bases (vector stores) and their background ingestion
    embeddings: EmbeddingModels  # embedding models, loaded on first use; shared by /v1/embeddings and knowledge
    responses: ResponseStore  # stored Responses (/v1/responses), for retrieval and previous_response_id
    batches: BatchStore  # batches (/v1/batches) and their lines' results
    batch_runner: BatchRunner  # runs batches, one line at a time, on the engines above
    background: BackgroundResponses  # the runs of background responses (and their event logs)


def get_state(request: Request) -> ServerState:
    return request.app.state.tailor
