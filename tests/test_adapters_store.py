"""AdapterStore: add, list, get, verify, remove; refusals (pickle, unknown base, DoRA); `tailor adapters`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import tailorlm.cli.adapters  # noqa: F401  (registers the verbs on `app`)
from tailorlm.cli import app
from tailorlm.errors import (
    AlreadyExistsError,
    IntegrityError,
    ModelNotFoundError,
    UnsafeFormatError,
    UnsupportedModelError,
)
from tailorlm.store import AdapterStore, ModelStore
from tests.tiny import make_tiny_adapter, make_tiny_model

BASE = "tiny-llama"
NAME = "ft:tiny-llama:pip:ftjob-0a1b2c"


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny base model folder and a PEFT adapter folder over it."""
    root = tmp_path_factory.mktemp("src")
    base = make_tiny_model("llama", root / "base")
    return base, make_tiny_adapter(base, root / "adapter", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])


@pytest.fixture
def store(tailor_home: Path, folders) -> AdapterStore:
    ModelStore(tailor_home).import_path(folders[0], name=BASE, show_progress=False)
    return AdapterStore(tailor_home)


def test_add_list_get_verify_remove(store: AdapterStore, folders) -> None:
    m = store.add(NAME, BASE, folders[1], extra={"job": "ftjob-0a1b2c", "train_loss": 1.5})
    assert (m.name, m.base, m.rank, m.alpha, m.target_modules) == (NAME, BASE, 4, 8.0, ["q_proj", "v_proj"])
    assert m.extra == {"job": "ftjob-0a1b2c", "train_loss": 1.5}
    assert set(m.files) == {"adapter_config.json", "adapter_model.safetensors"}
    assert m.files["adapter_model.safetensors"].size == (folders[1] / "adapter_model.safetensors").stat().st_size
    assert store.get(NAME) == m and store.list() == [m]
    assert (store.path(NAME) / "manifest.json").is_file()
    store.verify(NAME)
    assert store.resolve(NAME) == m and store.resolve(BASE) is None  # a base model's name is no adapter's
    with pytest.raises(AlreadyExistsError):
        store.add(NAME, BASE, folders[1])
    assert store.add(NAME, BASE, folders[1], overwrite=True).name == NAME
    store.remove(NAME)
    assert store.list() == [] and not store.folder(NAME).exists()
    assert list((store.home / "tmp").iterdir()) == []


def test_tampered_file_is_named(store: AdapterStore, folders) -> None:
    store.add(NAME, BASE, folders[1])
    weights = store.path(NAME) / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="adapter_model.safetensors"):
        store.verify(NAME)


def test_unknown_is_404(store: AdapterStore, folders) -> None:
    store.add(NAME, BASE, folders[1])
    with pytest.raises(ModelNotFoundError, match="did you mean") as err:
        store.get("ft:tiny-llama:pip:ftjob-0a1b2d")
    assert err.value.status == 404
    with pytest.raises(ModelNotFoundError):  # an ft: name never falls back to a base model
        store.resolve("ft:tiny-llama:other:ftjob-1")


def test_refusals(store: AdapterStore, folders, tmp_path: Path) -> None:
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(folders[1] / "adapter_config.json", pickled)
    (pickled / "adapter_model.bin").write_bytes(b"not loaded, ever")
    with pytest.raises(UnsafeFormatError, match="pickle"):
        store.add(NAME, BASE, pickled)
    with pytest.raises(ModelNotFoundError, match="no-such-base"):
        store.add(NAME, "no-such-base", folders[1])
    with pytest.raises(AlreadyExistsError, match="stored model"):
        store.add(BASE, BASE, folders[1])
    dora = tmp_path / "dora"
    shutil.copytree(folders[1], dora)
    config = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(UnsupportedModelError, match="DoRA"):
        store.add(NAME, BASE, dora)
    assert store.list() == []


def test_cli_list_and_rm(store: AdapterStore, folders) -> None:
    store.add(NAME, BASE, folders[1])
    listed = CliRunner().invoke(app, ["adapters", "list"])
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.stdout.splitlines() if line.strip().startswith(NAME))
    assert BASE in row and " 4 " in row and "kB" in row
    removed = CliRunner().invoke(app, ["adapters", "rm", NAME])
    assert removed.exit_code == 0 and store.list() == []
    done = subprocess.run([sys.executable, "-m", "tailorlm", "adapters", "rm", NAME], env=dict(os.environ),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"error: adapter {NAME} is not in the store; see `tailor adapters list`"]
