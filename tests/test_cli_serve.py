"""`tailor serve` settings and guards, `tailor keys`, and the registry's memory budget."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tailorlm.config import Settings
from tailorlm.server.registry import ModelRegistry
from tailorlm.store import ModelStore
from tests.tiny import make_tiny_model, save_tiny_tokenizer


def tailor(*args: str, home: Path, **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "TAILOR_HOME": str(home), **env}
    return subprocess.run([sys.executable, "-m", "tailorlm", *args], env=full_env, capture_output=True, text=True,
                          timeout=120)


def test_serve_help_lists_every_setting(tailor_home):
    out = tailor("serve", "--help", home=tailor_home, COLUMNS="200")
    assert out.returncode == 0
    for name in Settings.model_fields:
        assert f"--{name.replace('_', '-')}" in out.stdout, name


def test_non_loopback_without_keys_is_refused(tailor_home):
    out = tailor("serve", "--host", "0.0.0.0", "--port", "0", home=tailor_home)
    assert out.returncode == 1
    assert "no API keys" in out.stderr and "--insecure" in out.stderr and "Traceback" not in out.stderr


def test_keys_cli_stores_only_digests(tailor_home):
    created = tailor("keys", "create", "ci", home=tailor_home)
    assert created.returncode == 0
    secret = created.stdout.strip()
    assert secret.startswith("tlm-") and len(secret) > 40
    listed = tailor("keys", "list", home=tailor_home, COLUMNS="200")
    assert "ci" in listed.stdout and secret not in listed.stdout and "active" in listed.stdout
    assert secret.encode() not in (tailor_home / "tailor.db").read_bytes()
    revoked = tailor("keys", "revoke", "ci", home=tailor_home)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    again = tailor("keys", "revoke", "ci", home=tailor_home)
    assert again.returncode == 1 and len(again.stderr.strip().splitlines()) == 1


def test_config_file_env_and_flag_precedence(tailor_home, tmp_path, monkeypatch):
    config = tmp_path / "tailor.yaml"
    config.write_text("port: 9001\nmax_queue: 7\nmax_n: 3\n")
    monkeypatch.setenv("TAILOR_CONFIG", str(config))
    monkeypatch.setenv("TAILOR_MAX_QUEUE", "11")
    settings = Settings(max_n=5)
    assert (settings.port, settings.max_queue, settings.max_n) == (9001, 11, 5)


def test_registry_unloads_least_recently_used_over_budget(tailor_home, tmp_path):
    store = ModelStore(tailor_home)
    for name in ("a", "b"):
        folder = save_tiny_tokenizer(make_tiny_model("llama", tmp_path / name))
        store.import_path(folder, name=name, show_progress=False)
    size = store.get("a").size
    registry = ModelRegistry(Settings(home=tailor_home, memory_budget_gb=1.5 * size / 1024**3), store)

    async def scenario() -> list[list[str]]:
        seen = []
        for name in ("a", "b", "a"):
            await registry.get(name)
            seen.append(registry.loaded())
        return seen

    try:
        assert asyncio.run(scenario()) == [["a"], ["b"], ["a"]]
    finally:
        registry.close_all()
    with pytest.raises(Exception) as info:
        asyncio.run(registry.get("missing"))
    assert getattr(info.value, "status", None) == 404


def test_unloading_for_room_lets_requests_in_flight_finish(tailor_home, tmp_path):
    """A model unloaded to make room takes no new requests, but what it is generating for other clients finishes
    normally first (never cut short as a fake `stop`); past the drain time, what is left ends with an error."""
    from tailorlm.engine import SamplingParams

    store = ModelStore(tailor_home)
    for name in ("a", "b"):
        folder = save_tiny_tokenizer(make_tiny_model("llama", tmp_path / name))
        store.import_path(folder, name=name, show_progress=False)
    size = store.get("a").size
    greedy = SamplingParams(temperature=0, max_tokens=60, ignore_eos=True)

    async def scenario(drain_s: float):
        registry = ModelRegistry(Settings(home=tailor_home, memory_budget_gb=1.5 * size / 1024**3,
                                          unload_drain_s=drain_s), store)
        try:
            a = await registry.get("a")
            handle = a.submit([5, 6, 7], greedy)
            await registry.get("b")  # unloads "a" while it generates
            events = await asyncio.to_thread(list, handle)
            return registry.loaded(), events
        finally:
            registry.close_all()

    loaded, events = asyncio.run(scenario(drain_s=120))
    assert loaded == ["b"] and len([e for e in events if e.token_id is not None]) == 60
    assert events[-1].finish_reason == "length"
    loaded, events = asyncio.run(scenario(drain_s=0))
    assert events[-1].finish_reason == "error" and "unloaded to make room" in events[-1].error
