"""Token-level inference: load weights, schedule requests, batch, sample. No text, no HTTP."""

from tailorlm.engine.engine import Engine, RequestHandle
from tailorlm.engine.loader import LoadedModel, load_model
from tailorlm.engine.types import SamplingParams, TokenEvent

__all__ = ["Engine", "RequestHandle", "LoadedModel", "load_model", "SamplingParams", "TokenEvent"]
