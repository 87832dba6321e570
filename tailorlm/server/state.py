"""What every route needs, built once per app: settings, models, metrics, API keys."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from tailorlm.config import Settings
from tailorlm.server.auth import KeyStore
from tailorlm.server.metrics import Metrics
from tailorlm.server.registry import ModelRegistry


@dataclass
class ServerState:
    settings: Settings
    registry: ModelRegistry
    metrics: Metrics
    keys: KeyStore


def get_state(request: Request) -> ServerState:
    return request.app.state.tailor
