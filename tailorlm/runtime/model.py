"""Open a stored model for inference: ensure it is in the store, verify, load engine and tokenizer.

Names resolve as everywhere else (runtime/resolve.py): a LoRA adapter's name opens its base model with the
adapter loaded into the base's engine; a preset's opens what it runs on, with the preset attached.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from safetensors.torch import load_file

from tailorlm.backends import load_backend, pick_backend
from tailorlm.chat import TextTokenizer, load_tokenizer
from tailorlm.config import FAST_DTYPE, Settings, get_settings
from tailorlm.engine import Engine, RequestHandle, SamplingParams, TokenEvent, load_model
from tailorlm.errors import InvalidRequestError
from tailorlm.presets import Preset
from tailorlm.runtime.fast_dtype import fast_dtype
from tailorlm.runtime.resolve import Resolved, resolve
from tailorlm.store import AdapterManifest, AdapterStore, Manifest, ModelStore
from tailorlm.store.peft import WEIGHTS_FILE, read_config

log = logging.getLogger(__name__)


@dataclass
class OpenModel:
    """One model ready to generate: its manifest, its engine (tokens) and its tokenizer (text).

    With `adapter` set, this is a LoRA adapter served by its base model's engine (shared with the base
    and the base's other adapters); `manifest` and `tokenizer` are the base's.
    """

    manifest: Manifest
    engine: Engine
    tokenizer: TextTokenizer
    load_seconds: float
    adapter: AdapterManifest | None = None
    preset: Preset | None = None  # set when opened by a preset's name: its instructions, defaults, knowledge

    @property
    def name(self) -> str:
        return self.adapter.name if self.adapter is not None else self.manifest.name

    def submit(self, prompt: list[int], params: SamplingParams | None = None, *,
               sink: Callable[[TokenEvent], None] | None = None) -> RequestHandle:
        """Queue a generation on this model (through its adapter, if any)."""
        adapter = self.adapter.name if self.adapter is not None else None
        return self.engine.submit(prompt, params, adapter=adapter, sink=sink)

    def close(self, reason: str | None = None) -> None:
        self.engine.shutdown(reason)


def open_model(name: str | Resolved | None = None, *, settings: Settings | None = None,
               store: ModelStore | None = None, show_progress: bool = True) -> OpenModel:
    """Open `name` (a model, an adapter or a preset; default: the default model, pulled on first use)."""
    settings = settings or get_settings()
    store = store or ModelStore(settings.home)
    found = name if isinstance(name, Resolved) else resolve(name, settings)
    start = time.perf_counter()
    model = _open_base(found.model, settings, store, show_progress)
    if found.adapter is not None:
        model = with_adapter(model, found.adapter, AdapterStore(store.home), verify=settings.verify_digests)
    return dataclasses.replace(model, preset=found.preset, load_seconds=time.perf_counter() - start)


def with_adapter(model: OpenModel, adapter: AdapterManifest, adapters: AdapterStore, *,
                 verify: bool = True) -> OpenModel:
    """`model` (a base) as `adapter`: loaded into the base's engine once, again only if the stored adapter changed."""
    if adapter.base != model.manifest.name:
        raise InvalidRequestError(f"adapter {adapter.name} tunes {adapter.base}, not {model.manifest.name}")
    if model.engine.adapters.get(adapter.name) != adapter.fingerprint:
        if verify:
            adapters.verify(adapter.name)
        folder = adapters.path(adapter.name)
        model.engine.load_adapter(adapter.name, load_file(folder / WEIGHTS_FILE), read_config(folder),
                                  version=adapter.fingerprint)
    return dataclasses.replace(model, adapter=adapter)


def _open_base(name: str, settings: Settings, store: ModelStore, show_progress: bool) -> OpenModel:
    start = time.perf_counter()
    manifest = store.ensure(name, show_progress=show_progress)
    if settings.verify_digests:
        store.verify(manifest.name)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    path = store.path(manifest.name)
    backend = pick_backend(manifest.format, settings.backend)
    if backend == "native":
        dtype = settings.dtype
        if dtype == FAST_DTYPE:  # int8 where it passes the parity gate on this machine (fast_dtype.py)
            dtype, why = fast_dtype(path, manifest, settings)
            log.info("%s: dtype fast -> %s", manifest.name, why)
        loaded = load_model(path, name=manifest.name, dtype=dtype, compile=settings.compile,
                            kernels=settings.kernels)
    else:
        loaded = load_backend(backend, path, manifest, settings)
    tokenizer = load_tokenizer(path, name=manifest.name)
    eos = list(dict.fromkeys(loaded.eos_token_ids + tokenizer.eos_token_ids))
    loaded.eos_token_ids = eos
    engine = Engine(loaded, max_batch=settings.max_batch, prefill_budget=settings.prefill_chunk,
                    prefix_cache_bytes=settings.prefix_cache_mb * 2**20, kv_budget_bytes=settings.kv_cache_mb * 2**20)
    return OpenModel(manifest, engine, tokenizer, time.perf_counter() - start)
