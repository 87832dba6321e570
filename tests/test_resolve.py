"""One model resolution (tailorlm/runtime/resolve.py): a table of names and what each resolves to, the same
answer from every caller (the CLI, the server, bundles, export, eval, plan), and the errors that are never a
fallback."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tailorlm.config import DEFAULT_MODEL, Settings
from tailorlm.errors import InvalidRequestError, ModelNotFoundError
from tailorlm.presets import Preset
from tailorlm.presets.checks import create_preset
from tailorlm.runtime.resolve import base_model, dealias, no_presets, resolve
from tailorlm.store import AdapterStore, ModelStore
from tests.tiny import make_tiny_adapter, make_tiny_model
from tests.tiny_gguf import write_tiny_gguf

ADAPTER = "ft:tiny:demo:job1"


@pytest.fixture
def home(tailor_home: Path, tmp_path: Path) -> Path:
    """A store with a model, an exported GGUF artifact of it, an adapter, and presets over both (the
    embedded default is not pulled)."""
    folder = make_tiny_model("llama", tmp_path / "tiny")
    models = ModelStore(tailor_home)
    models.import_path(folder, name="tiny", show_progress=False)
    gguf = write_tiny_gguf(folder, tmp_path / "tiny.gguf")

    def fill(staged: Path, staging, stages) -> dict:  # what `tailor export tiny --format gguf` registers
        shutil.copytree(folder, staged, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.safetensors"))
        shutil.copyfile(gguf, staged / "model.gguf")
        return {}

    models.add_artifact("tiny-gguf", "export:tiny", fill, {"format": "gguf", "quantization": "f32",
                                                           "exported_from": "tiny"}, show_progress=False)
    AdapterStore(tailor_home).add(ADAPTER, "tiny", make_tiny_adapter(folder, tmp_path / "adapter"))
    settings = Settings(home=tailor_home)
    create_preset(settings, Preset(name="pip", model="tiny", adapter=ADAPTER, system="You are Pip."))
    create_preset(settings, Preset(name="pip", model="tiny", adapter=ADAPTER, system="You are Pip, v2."))
    create_preset(settings, Preset(name="plain", model="tiny", parameters={"temperature": 0.2}))
    return tailor_home


def settings_of(home: Path, **aliases: str) -> Settings:
    return Settings(home=home, aliases=aliases)


# name -> (kind, canonical name, model that computes, adapter, preset version)
TABLE = [
    ("tiny", ("model", "tiny", "tiny", None, None)),
    ("TINY", ("model", "tiny", "tiny", None, None)),
    ("tiny-gguf", ("model", "tiny-gguf", "tiny-gguf", None, None)),
    (ADAPTER, ("adapter", ADAPTER, "tiny", ADAPTER, None)),
    ("pip", ("preset", "pip", "tiny", ADAPTER, 2)),
    ("pip@1", ("preset", "pip@1", "tiny", ADAPTER, 1)),
    ("plain", ("preset", "plain", "tiny", None, 1)),
    (DEFAULT_MODEL, ("model", DEFAULT_MODEL, DEFAULT_MODEL, None, None)),  # embedded, not pulled yet
    (None, ("model", DEFAULT_MODEL, DEFAULT_MODEL, None, None)),
    ("default", ("model", DEFAULT_MODEL, DEFAULT_MODEL, None, None)),
    ("gpt-4o-mini", ("preset", "pip", "tiny", ADAPTER, 2)),  # an alias, below
    ("chain", ("preset", "plain", "tiny", None, 1)),  # an alias of an alias
]


@pytest.mark.parametrize("name,expected", TABLE, ids=[str(n) for n, _ in TABLE])
def test_names_resolve_in_one_precedence(home: Path, name: str | None, expected: tuple) -> None:
    found = resolve(name, settings_of(home, **{"gpt-4o-mini": "pip", "chain": "again", "again": "plain"}))
    kind, canonical, model, adapter, version = expected
    assert (found.kind, found.name, found.model) == (kind, canonical, model)
    assert (found.adapter.name if found.adapter else None) == adapter
    assert (found.preset.version if found.preset else None) == version
    assert found.target == (adapter or model)
    assert found.embedded == (model == DEFAULT_MODEL)
    assert found.artifact == ("gguf" if model == "tiny-gguf" else None)


@pytest.mark.parametrize("name,error,words", [
    ("nope", ModelNotFoundError, "nope is no model, adapter or preset in the store"),
    ("tiyn", ModelNotFoundError, "did you mean tiny"),
    ("ft:tiny:demo:nojob", ModelNotFoundError, "adapter ft:tiny:demo:nojob is not in the store"),
    ("pip@9", ModelNotFoundError, "preset pip has no version 9"),
    ("nope@1", ModelNotFoundError, "preset nope does not exist"),
    ("../etc", InvalidRequestError, "invalid model name"),
    ("loop", InvalidRequestError, "aliases of 'loop' loop"),
])
def test_unknown_and_bad_names_are_errors_never_a_fallback(home: Path, name: str, error: type, words: str) -> None:
    with pytest.raises(error, match=words):
        resolve(name, settings_of(home, loop="round", round="loop"))


def test_an_alias_is_looked_up_before_stored_names(home: Path) -> None:
    assert resolve("tiny", settings_of(home, tiny="pip")).kind == "preset"
    assert dealias("tiny", settings_of(home)) == "tiny"
    assert dealias(None, Settings(home=home, default_model="tiny")) == "tiny"


def test_callers_that_cannot_take_a_preset_or_an_adapter_say_so(home: Path) -> None:
    s = settings_of(home)
    with pytest.raises(InvalidRequestError, match="pip is a preset; export takes its model"):
        no_presets(resolve("pip", s), "export")
    with pytest.raises(InvalidRequestError, match="is an adapter; tuning starts from a stored base model"):
        base_model(ADAPTER, s, "tuning")
    assert base_model("tiny", s, "tuning").name == "tiny"


def test_every_caller_resolves_alike(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """bundles, eval, plan and export take the names the server takes, through the same module."""
    from tailorlm.bundle.pack import resolve as bundle_kind
    from tailorlm.export.source import resolve as export_source
    from tailorlm.plan.stored import plan_stored
    from tailorlm.plan.targets import TARGETS
    from tailorlm.tune.evaluate import resolve_target

    monkeypatch.setenv("TAILOR_ALIASES", '{"gpt-4o-mini": "pip"}')
    from tailorlm.config import get_settings

    get_settings.cache_clear()
    s = get_settings()
    assert s.aliases == {"gpt-4o-mini": "pip"}
    assert bundle_kind(s, "gpt-4o-mini") == ("preset", "pip")
    assert bundle_kind(s, ADAPTER) == ("adapter", ADAPTER)
    target = resolve_target("gpt-4o-mini", s)
    assert (target.name, target.base.name, target.preset.system) == ("pip", "tiny", "You are Pip, v2.")
    assert target.adapter_path == AdapterStore(home).path(ADAPTER)
    source = export_source(ADAPTER, s)
    assert (source.name, source.base.name, source.adapter.name) == (ADAPTER, "tiny", ADAPTER)
    with pytest.raises(InvalidRequestError, match="is a preset"):
        export_source("gpt-4o-mini", s)
    assert plan_stored("gpt-4o-mini", home=home, target=TARGETS["laptop-16gb"], context=64).model == "pip"


def test_eval_runs_a_preset_as_it_serves(home: Path) -> None:
    """Evaluating a preset puts its instructions into every held-out example (the reference stays)."""
    from tailorlm.tune.evaluate import HeldOut, resolve_target, under_preset

    s = settings_of(home)
    ask, answer = {"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "Pip."}
    examples = [HeldOut(1, {"messages": [ask, answer]}, [ask], "Pip.")]
    [run] = under_preset(resolve_target("pip", s), examples, s)
    system = {"role": "system", "content": "You are Pip, v2."}
    assert run.prompt == [system, ask] and run.data["messages"] == [system, ask, answer]
    assert run.reference == "Pip." and run.question == "Who are you?"
    assert under_preset(resolve_target(ADAPTER, s), examples, s) == examples
