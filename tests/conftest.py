"""Shared fixtures: an isolated TAILOR_HOME and tiny random models of several families."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.fixtures_default import default_store_home  # noqa: F401  (one session-wide copy for all modules)
from tests.tiny import make_tiny_model  # noqa: F401  (re-exported for tests)


@pytest.fixture(autouse=True)
def tailor_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own store so that tests never see each other's models."""
    home = tmp_path / "tailor-home"
    monkeypatch.setenv("TAILOR_HOME", str(home))
    from tailorlm.config import get_settings

    get_settings.cache_clear()
    yield home
    get_settings.cache_clear()


@pytest.fixture(autouse=True, scope="session")
def _torch_threads() -> None:
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def default_server(default_store_home):
    """One live server over the default model, shared by the end-to-end API tests."""
    from tailorlm.config import Settings
    from tests.server_harness import live_server

    with live_server(Settings(home=default_store_home, threads=2)) as live:
        yield live
