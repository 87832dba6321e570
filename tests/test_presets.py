"""Presets: versioned storage, the `tailor preset` CLI, and a grounded chat over real HTTP with the `openai` client."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest
import yaml
from typer.testing import CliRunner

import tailorlm.cli.preset  # noqa: F401  (registers the verbs on `app`)
from tailorlm.cli import app
from tailorlm.config import DEFAULT_MODEL, Settings
from tailorlm.errors import InvalidRequestError, ModelNotFoundError, TailorError
from tailorlm.presets import Preset, PresetStore
from tailorlm.presets.checks import create_preset
from tests.server_harness import live_server, stream_chunks
from tests.spec import validate

HOURS = """# Opening hours

The Lindenfeld library opens at nine in the morning on weekdays and at ten on Saturdays.
It is closed on Sundays and on public holidays.
"""
CARDS = """# Library cards

A library card costs twelve euros a year. Students under eighteen get their card for free.
"""


def home_with_default_model(home: Path, default_store_home: Path) -> Path:
    """A fresh home that sees the session's default model (read only) but keeps its own presets and kbs."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "models").symlink_to(default_store_home / "models", target_is_directory=True)
    return home


def test_versions_latest_and_removal(tmp_path: Path) -> None:
    store = PresetStore(tmp_path)
    one = store.add(Preset(name="Desk", model="m", system="first"))
    two = store.add(Preset(name="desk", model="m", system="second", parameters={"temperature": 0.2}))
    assert (one.ref, two.ref) == ("desk@1", "desk@2")
    assert store.get("desk").system == "second" and store.get("desk@1").system == "first"
    assert [p.ref for p in store.list()] == ["desk@2"]
    assert store.find("not-a-preset") is None and store.find("ft:base:x:y") is None
    with pytest.raises(ModelNotFoundError):
        store.get("desk@7")
    assert store.remove("desk@2") == [2] and store.get("desk").version == 1
    assert store.remove("desk") == [1] and store.find("desk") is None
    with pytest.raises(InvalidRequestError):
        Preset.parse({"name": "x", "model": "m", "parameters": {"temperature": 9}})
    with pytest.raises(InvalidRequestError):
        Preset.parse({"name": "x", "model": "m", "parameters": {"warmth": 1}})


def test_cli_create_list_show_rm(tailor_home: Path, default_store_home: Path, tmp_path: Path) -> None:
    home_with_default_model(tailor_home, default_store_home)
    runner = CliRunner()
    kbs = __import__("tailorlm.kb", fromlist=["KnowledgeBases"]).KnowledgeBases(Settings(home=tailor_home))
    kbs.create("handbook")
    done = runner.invoke(app, ["preset", "create", "desk", "--from", DEFAULT_MODEL, "--system", "Be brief.",
                               "--kb", "handbook:3", "--temperature", "0.1", "--max-tokens", "40"])
    assert done.exit_code == 0, done.output
    assert "desk@1" in done.output
    spec = tmp_path / "desk.yaml"
    spec.write_text(yaml.safe_dump({"model": DEFAULT_MODEL, "system": "Be kind.",
                                    "parameters": {"top_p": 0.9}, "knowledge": [{"name": "handbook", "k": 2}]}))
    assert runner.invoke(app, ["preset", "create", "desk", "-f", str(spec)]).exit_code == 0

    listed = runner.invoke(app, ["preset", "list"])
    row = next(line for line in listed.stdout.splitlines() if line.strip().startswith("desk"))
    assert DEFAULT_MODEL in row and "handbook:2" in row and " 2 " in row
    shown = yaml.safe_load(runner.invoke(app, ["preset", "show", "desk@1"]).stdout)
    assert shown["system"] == "Be brief." and shown["parameters"] == {"temperature": 0.1, "max_tokens": 40}
    assert shown["knowledge"][0]["k"] == 3

    bad_filter = tmp_path / "bad.yaml"
    bad_filter.write_text(yaml.safe_dump({"model": DEFAULT_MODEL,
                                          "knowledge": [{"name": "handbook", "filters": {"type": "like"}}]}))
    for bad in (["preset", "create", "x", "--from", "no-such-model"],
                ["preset", "create", "x", "--from", DEFAULT_MODEL, "--kb", "no-such-kb"],
                ["preset", "create", DEFAULT_MODEL, "--from", DEFAULT_MODEL],
                ["preset", "create", "x", "-f", str(bad_filter)],
                ["preset", "show", "nope"]):
        result = runner.invoke(app, bad)
        assert result.exit_code != 0 and isinstance(result.exception, TailorError), result.output

    assert runner.invoke(app, ["preset", "rm", "desk"]).exit_code == 0
    assert PresetStore(tailor_home).find("desk") is None


@pytest.fixture(scope="module")
def preset_home(tmp_path_factory, default_store_home: Path) -> Path:
    from tailorlm.kb import KnowledgeBases

    home = home_with_default_model(tmp_path_factory.mktemp("preset-home") / "home", default_store_home)
    settings = Settings(home=home)
    docs = tmp_path_factory.mktemp("docs")
    kbs = KnowledgeBases(settings)
    kbs.create("library")
    for name, text in (("hours.md", HOURS), ("cards.md", CARDS)):
        (docs / name).write_text(text)
        assert kbs.add_path("library", docs / name).status == "added"
    kbs.create("doomed")
    create_preset(settings, Preset(name="librarian", model=DEFAULT_MODEL, system="You are the library's helper.",
                                   parameters={"temperature": 0, "max_tokens": 24},
                                   knowledge=[{"name": "library", "k": 2}]))
    create_preset(settings, Preset(name="orphan", model=DEFAULT_MODEL, knowledge=[{"name": "doomed"}]))
    kbs.remove("doomed")  # the preset now names a knowledge base that is gone
    return home


@pytest.fixture(scope="module")
def live(preset_home: Path):
    with live_server(Settings(home=preset_home, threads=2)) as server:
        yield server


QUESTION = [{"role": "user", "content": "When does the library open on Saturdays?"}]


def test_preset_chat_returns_sources(live) -> None:
    client = live.client()
    completion = client.chat.completions.create(model="librarian", messages=QUESTION)
    assert completion.model == "librarian"
    sources = completion.model_extra["sources"]
    assert 1 <= len(sources) <= 2 and sources[0]["index"] == 1
    top = sources[0]
    assert top["filename"] == "hours.md" and "Saturdays" in top["text"] and top["knowledge_base"] == "library"
    assert {"file_id", "chunk_id", "position", "score"} <= set(top)
    assert completion.usage.completion_tokens <= 24  # the preset's default max_tokens
    body = completion.to_dict()
    assert body["sources"] == sources
    body.pop("sources")
    validate(body, "CreateChatCompletionResponse")

    plain = client.chat.completions.create(model=DEFAULT_MODEL, messages=QUESTION, max_tokens=1)
    assert completion.usage.prompt_tokens > plain.usage.prompt_tokens + 20  # the sources were in the prompt
    assert "sources" not in (plain.model_extra or {})

    short = client.chat.completions.create(model="librarian@1", messages=QUESTION, max_tokens=2)
    assert short.usage.completion_tokens <= 2 and short.model == "librarian@1"  # the request's value wins

    chunks = stream_chunks(live, {"model": "librarian", "messages": QUESTION})
    assert chunks[0]["sources"] == sources and all("sources" not in c for c in chunks[1:])
    stream = client.chat.completions.create(model="librarian", messages=QUESTION, stream=True)
    first = next(iter(stream))
    assert first.model_extra["sources"][0]["filename"] == "hours.md"
    stream.close()


def test_the_cli_runs_a_preset_as_the_api_does(live, preset_home: Path) -> None:
    """`tailor generate PRESET` and `tailor chat PRESET`: the same prompt (instructions and sources), defaults
    and answer as the API's chat completion for the same conversation."""
    from tests.test_cli_run import tailor

    api = live.client().chat.completions.create(model="librarian", messages=QUESTION)
    out = tailor("generate", "librarian", QUESTION[0]["content"], "--json", home=preset_home)
    assert out.returncode == 0, out.stderr
    cli = json.loads(out.stdout)
    assert cli["model"] == "librarian@1"
    assert cli["usage"]["prompt_tokens"] == api.usage.prompt_tokens
    assert cli["usage"]["completion_tokens"] == api.usage.completion_tokens <= 24  # the preset's max_tokens
    assert cli["text"] == api.choices[0].message.content
    assert [s["chunk_id"] for s in cli["sources"]] == [s["chunk_id"] for s in api.model_extra["sources"]]
    chat = tailor("chat", "librarian", input=QUESTION[0]["content"] + "\n/bye\n", home=preset_home)
    assert chat.returncode == 0, chat.stderr
    assert api.choices[0].message.content.strip()[:20] in chat.stdout and "[1] hours.md" in chat.stderr
    missing = tailor("generate", "librarian@7", "hi", home=preset_home)
    assert missing.returncode != 0 and "preset librarian has no version 7" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_presets_listed_and_404s(live) -> None:
    client = live.client()
    ids = {m.id for m in client.models.list()}
    assert {"librarian", "orphan", DEFAULT_MODEL} <= ids
    assert client.models.retrieve("librarian@1").id == "librarian@1"
    for model in ("no-such-preset", "librarian@9"):
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model=model, messages=QUESTION)
    with live.http() as http:
        res = http.post("/v1/chat/completions", json={"model": "orphan", "messages": QUESTION})
    assert res.status_code == 404
    validate(res.json(), "ErrorResponse")
    assert "doomed" in res.json()["error"]["message"]



def test_preset_over_an_adapter(tmp_path: Path) -> None:
    """A preset runs on its adapter (same tokens as the adapter asked directly); an adapter must fit its base."""
    from tailorlm.store import AdapterStore, ModelStore
    from tests.test_lora_serving import ADAPTERS
    from tests.tiny import make_tiny_adapter, make_tiny_model, save_tiny_tokenizer

    base = save_tiny_tokenizer(make_tiny_model("llama", tmp_path / "base"))
    home = tmp_path / "home"
    ModelStore(home).import_path(base, name="tiny", show_progress=False)
    ModelStore(home).import_path(base, name="tiny-2", show_progress=False)
    AdapterStore(home).add("ft:tiny:a:ftjob-a", "tiny", make_tiny_adapter(base, tmp_path / "a", seed=1,
                                                                          **ADAPTERS["llama"][0]))
    settings = Settings(home=home, threads=2, default_model="tiny")
    with pytest.raises(InvalidRequestError):
        create_preset(settings, Preset(name="misfit", model="tiny-2", adapter="ft:tiny:a:ftjob-a"))
    create_preset(settings, Preset(name="tuned", model="tiny", adapter="ft:tiny:a:ftjob-a",
                                   parameters={"temperature": 0, "max_tokens": 8}))
    hello = [{"role": "user", "content": "Hello there"}]
    with live_server(settings) as live:
        client = live.client()
        ask = {"messages": hello, "extra_body": {"ignore_eos": True}}
        via_preset = client.chat.completions.create(model="tuned", **ask)
        direct = client.chat.completions.create(model="ft:tiny:a:ftjob-a", temperature=0, max_tokens=8, **ask)
        plain = client.chat.completions.create(model="tiny", temperature=0, max_tokens=8, **ask)
    assert via_preset.choices[0].message.content == direct.choices[0].message.content
    assert via_preset.choices[0].message.content != plain.choices[0].message.content
    assert via_preset.usage.completion_tokens == 8 and via_preset.model_extra.get("sources") == []


def test_a_clients_system_message_adds_to_the_presets_unless_it_says_replace() -> None:
    """The organization's instructions are not silently dropped by a client's system message."""
    from tailorlm.presets.grounding import apply

    asked = [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hi"}]
    kept = apply(Preset(name="desk", model="m", system="You answer for the library."), asked, [])
    assert kept[0] == {"role": "system", "content": "You answer for the library.\n\nAnswer in French."}
    assert kept[1:] == asked[1:]
    replaced = apply(Preset(name="desk", model="m", system="Library.", client_system="replace"), asked, [])
    assert replaced[0]["content"] == "Answer in French."
    assert apply(Preset(name="desk", model="m"), asked, [])[0]["content"] == "Answer in French."
