"""dtype fast: int8 where it passes the parity gate against the stored weights, else the stored dtype; the
verdict is computed once per model and machine kind; `tailor serve` defaults to it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tailorlm.config import Settings
from tailorlm.runtime import fast_dtype as fast
from tailorlm.runtime import open_model
from tailorlm.store import ModelStore
from tests.tiny import make_tiny_model, save_tiny_tokenizer


@pytest.fixture
def stored(tailor_home: Path, tmp_path: Path):
    folder = save_tiny_tokenizer(make_tiny_model("llama", tmp_path / "tiny"))
    store = ModelStore(tailor_home)
    manifest = store.import_path(folder, name="tiny", show_progress=False)
    return store.path("tiny"), manifest, Settings(home=tailor_home)


def test_the_gate_decides_once_and_its_verdict_is_kept(stored, monkeypatch):
    path, manifest, settings = stored
    dtype, why = fast.fast_dtype(path, manifest, settings)
    assert dtype in ("int8", "auto") and "parity gate" in why and "top-1 agreement" in why
    monkeypatch.setattr(fast, "_gate", lambda *_: pytest.fail("the gate ran twice"))
    again, why_again = fast.fast_dtype(path, manifest, settings)
    assert again == dtype and why_again.endswith("(cached verdict)")


def test_the_served_model_is_loaded_as_the_gate_says(stored, monkeypatch):
    path, manifest, settings = stored
    for verdict, int8 in (("int8", True), ("auto", False)):
        monkeypatch.setattr(fast, "_gate", lambda *_, v=verdict: (v, f"{v} (test)"))
        for cached in (settings.home / "cache" / "dtype-gate").glob("*.json"):
            cached.unlink()
        opened = open_model("tiny", settings=settings.model_copy(update={"dtype": "fast"}), show_progress=False)
        assert opened.engine.loaded.int8 is int8
        opened.close()


def test_fast_needs_the_native_kernels(stored):
    path, manifest, settings = stored
    dtype, why = fast.fast_dtype(path, manifest, settings.model_copy(update={"kernels": "torch"}))
    assert dtype == "auto" and "native kernels" in why


def test_serve_defaults_to_fast_and_keeps_a_given_dtype(tailor_home, monkeypatch):
    from typer.testing import CliRunner

    from tailorlm.cli import _register, app
    from tailorlm.cli import serve as serve_cli

    _register()
    served: list[Settings] = []
    monkeypatch.setattr(serve_cli, "run_server", served.append)
    assert CliRunner().invoke(app, ["serve", "--no-preflight"]).exit_code == 0
    assert CliRunner().invoke(app, ["serve", "--no-preflight", "--dtype", "float32"]).exit_code == 0
    monkeypatch.setenv("TAILOR_DTYPE", "bfloat16")
    assert CliRunner().invoke(app, ["serve", "--no-preflight"]).exit_code == 0
    assert [s.dtype for s in served] == ["fast", "float32", "bfloat16"]
