"""`tailor generate` and `tailor chat` end to end on the real default model (SmolLM2-135M-Instruct)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest


pytestmark = pytest.mark.slow


def tailor(*args: str, home: Path, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "TAILOR_HOME": str(home), "TAILOR_THREADS": "2"}
    return subprocess.run([sys.executable, "-m", "tailorlm", *args], env=env, capture_output=True,
                          text=True, timeout=300, **kw)


def test_generate_answers_paris(default_store_home):
    out = tailor("generate", "What is the capital of France?", home=default_store_home)
    assert out.returncode == 0, out.stderr
    assert "Paris" in out.stdout


def test_generate_json_is_scriptable(default_store_home):
    out = tailor("generate", "smollm2-135m-instruct", "What is the capital of France?", "--json",
                 "--max-tokens", "20", home=default_store_home)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert "Paris" in result["text"]
    assert result["finish_reason"] in ("stop", "length")
    assert result["usage"]["total_tokens"] == result["usage"]["prompt_tokens"] + result["usage"]["completion_tokens"]


def test_generate_seeded_sampling_and_stop_string(default_store_home):
    args = ("generate", "Tell me about cats.", "-t", "0.9", "--seed", "11", "--max-tokens", "24", "--json")
    first = json.loads(tailor(*args, home=default_store_home).stdout)
    again = json.loads(tailor(*args, home=default_store_home).stdout)
    assert first["text"] == again["text"]
    out = tailor("generate", "Count from 1 to 10, separated by commas.", "--stop", "5", "--json",
                 home=default_store_home)
    result = json.loads(out.stdout)
    assert "5" not in result["text"] and "4" in result["text"] and result["finish_reason"] == "stop"


def test_errors_are_one_line(default_store_home):
    out = tailor("generate", "no-such-model", "hello", home=default_store_home)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert "no-such-model" in out.stderr
    out = tailor("generate", "hello", "--max-tokens", "9000", home=default_store_home)
    assert out.returncode != 0 and "maximum context length is 8192" in out.stderr
    assert "Traceback" not in out.stderr


def test_chat_commands(default_store_home):
    script = "\n".join([
        "/system Answer in one short sentence.",
        "What is the capital of France?",
        "/reset",
        "/bye",
    ]) + "\n"
    out = tailor("chat", "-t", "0", home=default_store_home, input=script)
    assert out.returncode == 0, out.stderr
    assert "Paris" in out.stdout
    assert "system prompt set" in out.stdout and "conversation cleared" in out.stdout


def test_chat_ctrl_c_stops_the_answer_not_the_chat(default_store_home):
    env = {**os.environ, "TAILOR_HOME": str(default_store_home), "TAILOR_THREADS": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "tailorlm", "chat", "-t", "0", "--max-tokens", "500"],
                            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    chunks: list[str] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: proc.stdout.read(1), "")), daemon=True)
    reader.start()
    proc.stdin.write("Write a very long story about a dragon who learns to paint.\n")
    proc.stdin.flush()
    deadline = time.monotonic() + 120
    banner = None
    while time.monotonic() < deadline:  # Ctrl-C once the story has begun: a few words after the banner, not a
        text = "".join(chunks)           # character count (a fast machine may finish a short story before that)
        banner = banner or (len(text) if "/bye" in text else None)
        if banner is not None and len(text.split()) >= len(text[:banner].split()) + 5:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 30
    while "[stopped]" not in "".join(chunks) and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.stdin.write("What is the capital of France?\n/bye\n")
    proc.stdin.flush()
    proc.stdin.close()
    assert proc.wait(timeout=120) == 0
    reader.join(timeout=5)
    text = "".join(chunks)
    assert "[stopped]" in text
    assert "Paris" in text.split("[stopped]", 1)[1]


def test_chat_session_keeps_history(default_store_home, monkeypatch):
    from tailorlm.engine import SamplingParams
    from tailorlm.runtime import ChatSession, open_model

    monkeypatch.setenv("TAILOR_HOME", str(default_store_home))
    from tailorlm.config import get_settings

    get_settings.cache_clear()
    model = open_model(show_progress=False)
    try:
        session = ChatSession(model, SamplingParams(temperature=0, max_tokens=8), system="Be brief.")
        first = "".join(d.content or "" for d in session.send("What is the capital of France?"))
        assert "Paris" in first
        stream = session.send("And of Italy?")
        next(stream)
        stream.close()  # an interrupted answer is kept as far as it went
        msgs = session.messages()
        assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant"]
        assert msgs[2]["content"] == first and msgs[4]["content"]
        session.reset()
        assert [m["role"] for m in session.messages()] == ["system"]
        assert model.engine.stats()["running"] == 0 or _drains(model)
    finally:
        model.close()


def _drains(model) -> bool:
    deadline = time.monotonic() + 5
    while model.engine.stats()["running"] and time.monotonic() < deadline:
        time.sleep(0.01)
    return model.engine.stats()["running"] == 0
