"""Open a stored model for inference: ensure it is in the store, verify, load engine and tokenizer."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from tailorlm.chat import TextTokenizer, load_tokenizer
from tailorlm.config import Settings, get_settings
from tailorlm.engine import Engine, load_model
from tailorlm.store import Manifest, ModelStore


@dataclass
class OpenModel:
    """One model ready to generate: its manifest, its engine (tokens) and its tokenizer (text)."""

    manifest: Manifest
    engine: Engine
    tokenizer: TextTokenizer
    load_seconds: float

    @property
    def name(self) -> str:
        return self.manifest.name

    def close(self) -> None:
        self.engine.shutdown()


def open_model(name: str | None = None, *, settings: Settings | None = None,
               store: ModelStore | None = None, show_progress: bool = True) -> OpenModel:
    """Open `name` (default: the embedded default, pulled on first use)."""
    settings = settings or get_settings()
    store = store or ModelStore(settings.home)
    name = name or settings.default_model
    start = time.perf_counter()
    manifest = store.ensure(name, show_progress=show_progress)
    if settings.verify_digests:
        store.verify(manifest.name)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    path = store.path(manifest.name)
    loaded = load_model(path, name=manifest.name, dtype=settings.dtype)
    tokenizer = load_tokenizer(path, name=manifest.name)
    eos = list(dict.fromkeys(loaded.eos_token_ids + tokenizer.eos_token_ids))
    loaded.eos_token_ids = eos
    engine = Engine(loaded, max_batch=settings.max_batch, prefill_budget=settings.prefill_chunk)
    return OpenModel(manifest, engine, tokenizer, time.perf_counter() - start)
