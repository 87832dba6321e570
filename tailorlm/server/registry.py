"""Every model in the store, loaded on first use and kept warm; LRU-unloaded over a memory budget.

An adapter is served by its base model's engine: the base is loaded (or found warm), the adapter is
loaded into it once, and the adapter's requests share decode steps with the base's and other adapters'.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

from tailorlm.config import Settings
from tailorlm.presets import PresetStore
from tailorlm.runtime import OpenModel, open_model
from tailorlm.runtime.model import with_adapter
from tailorlm.runtime.resolve import Resolved, resolve
from tailorlm.store import AdapterManifest, AdapterStore, Manifest, ModelStore

log = logging.getLogger("tailorlm.server")


class ModelRegistry:
    def __init__(self, settings: Settings, store: ModelStore | None = None) -> None:
        self.settings = settings
        self.store = store or ModelStore(settings.home)
        self.adapters = AdapterStore(self.store.home)
        self.presets = PresetStore(self.store.home)  # named models over these (served by serving/presets.py)
        self._loaded: OrderedDict[str, OpenModel] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}

    def manifests(self) -> list[Manifest | AdapterManifest]:
        """Every stored model and adapter, read afresh (a new adapter shows without a restart)."""
        return [*self.store.list(), *self.adapters.list()]

    def resolve(self, name: str | None) -> Resolved:
        """What `name` means (runtime/resolve.py), read afresh per request: a removed or replaced adapter or
        preset is noticed; ModelNotFoundError (404) for anything not in the store, never a fallback."""
        return resolve(name, self.settings)

    async def get(self, name: str | Resolved) -> OpenModel:
        """The engine that runs `name` (a preset's model or adapter, an adapter over its warm base, a model)."""
        found = name if isinstance(name, Resolved) else self.resolve(name)
        base = await self._base(found)
        if found.adapter is None:
            return base
        async with self._locks.setdefault(found.adapter.name, asyncio.Lock()):
            return await asyncio.to_thread(with_adapter, base, found.adapter, self.adapters,
                                           verify=self.settings.verify_digests)

    async def _base(self, found: Resolved) -> OpenModel:
        key = found.model
        if key in self._loaded:
            self._loaded.move_to_end(key)
            return self._loaded[key]
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            if key not in self._loaded:
                await self._make_room(found.manifest.size if found.manifest is not None else 0)
                model = await asyncio.to_thread(
                    open_model, found.base, settings=self.settings, store=self.store, show_progress=False
                )
                model.engine.max_waiting = self.settings.max_queue
                self._loaded[key] = model
                log.info("loaded %s in %.2fs", key, model.load_seconds)
        self._loaded.move_to_end(key)
        return self._loaded[key]

    async def _make_room(self, incoming: int) -> None:
        """Unload least recently used models until `incoming` bytes fit the memory budget.

        A model being unloaded takes no new requests (it leaves `_loaded` at once) and its requests in flight
        finish first, up to `unload_drain_s`, in a worker thread: other clients' streams are never cut short
        as if they had finished, and the event loop never waits on an engine thread.
        """
        budget = int(self.settings.memory_budget_gb * 1024**3)
        while self._loaded and sum(m.manifest.size for m in self._loaded.values()) + incoming > budget:
            name, model = self._loaded.popitem(last=False)
            log.info("unloading %s (memory budget %.1f GB)", name, self.settings.memory_budget_gb)
            await asyncio.to_thread(self._retire, name, model)

    def _retire(self, name: str, model: OpenModel) -> None:
        if not model.engine.wait_idle(self.settings.unload_drain_s):
            log.warning("unloading %s with requests still in flight after %.0fs", name, self.settings.unload_drain_s)
        model.close(f"the model {name} was unloaded to make room for another model (memory_budget_gb); retry")

    def forget_adapter(self, name: str) -> None:
        """Stop serving adapter `name` in every loaded engine (its requests in flight end with an error)."""
        for model in list(self._loaded.values()):
            if name in model.engine.adapters:
                model.engine.unload_adapter(name)

    def stats(self) -> dict[str, dict[str, int]]:
        return {name: m.engine.stats() for name, m in list(self._loaded.items())}

    def loaded(self) -> list[str]:
        return list(self._loaded)

    def abort_all(self) -> None:
        """Cancel every in-flight request (their streams end with a final chunk)."""
        for model in list(self._loaded.values()):
            model.engine.abort_all()

    def close_all(self) -> None:
        while self._loaded:
            _, model = self._loaded.popitem()
            model.close()
