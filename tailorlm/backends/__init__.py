"""Inference backends other than the native engine, behind the same `Engine`: llama.cpp runs GGUF
artifacts and onnxruntime runs ONNX ones. Each provides a `Runner` (tailorlm.engine.backend); the
scheduler, sampling, stops and the API above it are shared with the native engine."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from tailorlm.errors import BackendMissingError, UnsupportedModelError

if TYPE_CHECKING:
    from tailorlm.config import Settings
    from tailorlm.engine import LoadedModel
    from tailorlm.store import Manifest

BACKEND_FOR_FORMAT = {"safetensors": "native", "gguf": "llama.cpp", "onnx": "onnxruntime"}
FORMAT_FOR_BACKEND = {b: f for f, b in BACKEND_FOR_FORMAT.items()}
BACKENDS = ("auto", *FORMAT_FOR_BACKEND)
# backend -> (module that provides load(), the import it needs, the install command)
_MODULES = {
    "llama.cpp": ("tailorlm.backends.llamacpp", "llama_cpp", "pip install 'tailorlm[llama-cpp]'"),
    "onnxruntime": ("tailorlm.backends.onnxrt", "onnxruntime", "pip install 'tailorlm[onnx]'"),
}


def pick_backend(fmt: str, requested: str = "auto") -> str:
    """The backend for an artifact of format `fmt`: `requested`, if it can run that format, else an error."""
    natural = BACKEND_FOR_FORMAT.get(fmt)
    if natural is None:
        raise UnsupportedModelError(f"no backend runs {fmt!r} artifacts")
    if requested in ("auto", natural):
        return natural
    raise UnsupportedModelError(f"the {requested} backend cannot run a {fmt} artifact; it runs "
                                f"{FORMAT_FOR_BACKEND[requested]} (use --backend auto or {natural})")


def require(backend: str):
    """Import the optional package behind `backend`, or say how to install it."""
    _, package, install = _MODULES[backend]
    try:
        return importlib.import_module(package)
    except ImportError:
        raise BackendMissingError(f"the {backend} backend needs the `{package}` package, which is not installed; "
                                  f"install it with: {install}") from None


def load_backend(backend: str, path: Path, manifest: Manifest, settings: Settings) -> LoadedModel:
    """Load the artifact stored in `path` for `backend` (not "native")."""
    require(backend)
    module = importlib.import_module(_MODULES[backend][0])
    return module.load(path, manifest, settings)
