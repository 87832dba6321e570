"""`tailorlm.tune.data.check_file` and `tailor data check`: every error class, with its exact line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tailorlm.chat import TextTokenizer, load_tokenizer, render_chat
from tailorlm.errors import InvalidRequestError
from tailorlm.tune import DataReport, assistant_spans, auto_epochs, check_file
from tests.tiny import make_tiny_model, save_tiny_tokenizer

CTX = 256


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> TextTokenizer:
    return load_tokenizer(save_tiny_tokenizer(tmp_path_factory.mktemp("tok")))


def chat(user: str = "Hello", answer: str = "Paris.", **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}], **extra}


def write(tmp_path: Path, *lines: Any) -> Path:
    """A JSONL file; str lines are written verbatim, anything else as JSON."""
    path = tmp_path / "data.jsonl"
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return path


def good(n: int) -> list[dict[str, Any]]:
    return [chat(f"Question {i}?") for i in range(n)]


def errors(report: DataReport) -> list[tuple[int | None, str]]:
    return [(p.line, p.message) for p in report.errors]


def check(tmp_path: Path, tok: TextTokenizer, *lines: Any, ctx: int | None = CTX) -> DataReport:
    return check_file(write(tmp_path, *lines), tok, ctx)


def test_valid_chat_file(tmp_path: Path, tok: TextTokenizer) -> None:
    report = check(tmp_path, tok, *good(40))
    assert report.ok and not report.problems and report.format == "chat"
    assert [e.line for e in report.examples] == list(range(1, 41))
    s = report.stats
    assert (s.examples, s.valid, s.dropped, s.epochs) == (40, 40, [], 3)  # OpenAI's auto epochs
    lengths = [len(render_chat(tok, e.data["messages"], add_generation_prompt=False)) for e in report.examples]
    assert s.total_tokens == sum(lengths) and (s.min_tokens, s.max_tokens) == (min(lengths), max(lengths))
    assert s.training_tokens == 3 * s.total_tokens and s.estimated_seconds == pytest.approx(s.training_tokens / 600)


@pytest.mark.parametrize(("line", "message"), [
    ("{not json", "invalid JSON"),
    ("[1, 2]", "not a JSON object (got an array)"),
    ({"text": "hi"}, "unknown format"),
    ({"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}, "unknown role 'robot'"),
    ({"messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "y"}]}, "no assistant message"),
    (chat(answer="  "), "messages[1] has empty content"),
    ({"messages": [{"role": "user"}, {"role": "assistant", "content": "y"}]}, "messages[0] has no content"),
    ({"messages": "hi"}, "'messages' must be a non-empty array"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "weight": 2}]},
     "weight 2; it must be 0 or 1"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "weight": True}]},
     "weight true; it must be 0 or 1"),
    ({"messages": [{"role": "user", "content": "x", "weight": 1}, {"role": "assistant", "content": "y"}]},
     "only assistant messages may have"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "weight": 0}]},
     "no trainable assistant message"),
])
def test_each_error_has_its_line(tmp_path: Path, tok: TextTokenizer, line: Any, message: str) -> None:
    rows = good(11)
    report = check(tmp_path, tok, *rows[:3], line, *rows[3:])
    assert report.ok is False
    assert len(report.errors) == 1 and report.errors[0].line == 4 and message in report.errors[0].message
    assert report.stats.dropped == [(4, report.errors[0].message)]
    assert report.stats.valid == 11 and report.stats.examples == 12
    assert 4 not in [e.line for e in report.examples]


def test_too_long_example(tmp_path: Path, tok: TextTokenizer) -> None:
    long = chat("Hello world " * 200)
    report = check(tmp_path, tok, *good(10), long, ctx=64)
    [(line, message)] = errors(report)
    n = len(render_chat(tok, long["messages"], add_generation_prompt=False))
    assert line == 11 and message == f"too long: {n} tokens, more than the model's context of 64"
    assert report.stats.max_tokens <= 64


def test_weights_set_trainable_tokens(tmp_path: Path, tok: TextTokenizer) -> None:
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello world, how are you?", "weight": 0},
            {"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}]
    ids, spans = assistant_spans(tok, msgs)
    # the one trained turn is exactly "Paris.<|im_end|>\n" after "<|im_start|>assistant\n"
    [(start, end)] = spans
    assert tok.decode(ids[start:end]) == "Paris.<|im_end|>\n" and end == len(ids)
    both = [dict(m, weight=1) if m["role"] == "assistant" else m for m in msgs]
    _, both_spans = assistant_spans(tok, both)
    assert tok.decode(ids[both_spans[0][0]:both_spans[0][1]]) == "Hello world, how are you?<|im_end|>\n"
    report = check(tmp_path, tok, {"messages": msgs}, {"messages": both})
    assert [e.trainable_tokens for e in report.examples] == [end - start, sum(e - s for s, e in both_spans)]
    assert report.stats.trainable_tokens == sum(e.trainable_tokens for e in report.examples)
    assert report.examples[0].tokens == len(ids) > report.examples[0].trainable_tokens


def test_tool_calls_and_tools(tmp_path: Path, tok: TextTokenizer) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\": \"Paris\"}"}}
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    example = {"tools": tools, "messages": [
        {"role": "developer", "content": "Use tools."}, {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"}, {"role": "assistant", "content": "Sunny."}]}
    report = check(tmp_path, tok, example, *good(9))
    assert report.ok, report.problems
    bad = dict(example, messages=example["messages"][:3] + [{"role": "tool", "content": None}] + example["messages"][4:])
    assert errors(check(tmp_path, tok, bad)) == [(1, "messages[3] has no content")]


def test_prompt_completion(tmp_path: Path, tok: TextTokenizer) -> None:
    rows = [{"prompt": f"The capital of France is{'!' * i}", "completion": " Paris."} for i in range(10)]
    report = check(tmp_path, tok, *rows)
    assert report.ok and report.format == "prompt_completion"
    prompt = tok.encode(rows[0]["prompt"], add_special_tokens=True)
    completion = tok.encode(" Paris.", add_special_tokens=False) + [tok.eos_token_ids[0]]
    assert (report.examples[0].tokens, report.examples[0].trainable_tokens) == (
        len(prompt) + len(completion), len(completion))
    report = check(tmp_path, tok, *rows[:2], {"prompt": "x"}, {"completion": "y"}, {"prompt": "x", "completion": ""},
                   {"prompt": 1, "completion": "y"})
    assert errors(report) == [(3, "missing 'completion'"), (4, "missing 'prompt'"), (5, "empty completion"),
                              (6, "'prompt' must be a string (got a number)")]


def test_mixed_formats(tmp_path: Path, tok: TextTokenizer) -> None:
    report = check(tmp_path, tok, *good(10), {"prompt": "a", "completion": "b"}, chat())
    assert errors(report) == [(11, "mixed formats: this line is prompt/completion but the file is chat (from line 1)")]
    assert report.stats.valid == 11


def test_warnings_duplicates_and_short_file(tmp_path: Path, tok: TextTokenizer) -> None:
    report = check(tmp_path, tok, chat(), "", chat("Other"), chat())
    assert report.ok  # warnings only; the blank line is not an example
    assert [(p.line, p.severity, p.message) for p in report.problems] == [
        (4, "warning", "duplicate of line 1"),
        (None, "warning", "only 3 valid examples; at least 10 are recommended")]
    assert report.stats.examples == 3 and report.stats.epochs == auto_epochs(3) == 25
    assert auto_epochs(100) == 3 and auto_epochs(20_000) == 1


def test_unreadable_file_and_empty_file(tmp_path: Path, tok: TextTokenizer) -> None:
    with pytest.raises(InvalidRequestError, match="does not exist"):
        check_file(tmp_path / "missing.jsonl", tok, CTX)
    with pytest.raises(InvalidRequestError, match="is not a file"):
        check_file(tmp_path, tok, CTX)
    assert errors(check(tmp_path, tok)) == [(None, "the file has no examples")]


# -- the command line -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tailorlm.store import ModelStore

    home = tmp_path_factory.mktemp("home")
    folder = save_tiny_tokenizer(make_tiny_model("llama", tmp_path_factory.mktemp("tiny")))
    ModelStore(home).import_path(folder, name="tiny", show_progress=False)
    return home


def tailor(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # Imports the verb module itself so the test holds whether or not `_register` lists it yet.
    env = dict(os.environ, TAILOR_HOME=str(home))
    return subprocess.run([sys.executable, "-m", "tailorlm", *args], capture_output=True, text=True, timeout=120, env=env)


def test_cli_exit_codes_and_json(tmp_path: Path, tiny_home: Path) -> None:
    path = write(tmp_path, *good(10))
    done = tailor(tiny_home, "data", "check", str(path), "--model", "tiny")
    assert done.returncode == 0, done.stderr
    assert "10 valid, 0 dropped" in done.stdout and "estimate" in done.stdout

    path = write(tmp_path, *good(10), "{oops", {"prompt": "a", "completion": "b"})
    done = tailor(tiny_home, "data", "check", str(path), "--model", "tiny", "--json")
    assert done.returncode == 1, done.stderr
    out = json.loads(done.stdout)
    assert out["ok"] is False and out["model"] == "tiny" and out["context_length"] == 256
    assert [(p["line"], p["severity"]) for p in out["problems"]] == [(11, "error"), (12, "error")]
    assert out["stats"]["valid"] == 10 and [d["line"] for d in out["stats"]["dropped"]] == [11, 12]

    done = tailor(tiny_home, "data", "check", str(tmp_path / "nope.jsonl"), "--model", "tiny")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip() == f"error: {tmp_path / 'nope.jsonl'} does not exist"


def test_cli_table_of_problems(tmp_path: Path, tiny_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    import tailorlm.cli.data  # noqa: F401  (registers `data` on `app`)
    from tailorlm.cli import app
    from tailorlm.config import get_settings

    monkeypatch.setenv("TAILOR_HOME", str(tiny_home))
    get_settings.cache_clear()
    path = write(tmp_path, *good(10), "{oops", chat(answer=""))
    done = CliRunner().invoke(app, ["data", "check", str(path), "--model", "tiny"])
    assert done.exit_code == 1
    assert "invalid JSON" in done.stdout and "messages[1] has empty content" in done.stdout
    assert "12: 10 valid, 2 dropped" in done.stdout and "2 errors, 0 warnings" in done.stdout
