"""A real server on a free loopback port, in a background thread, for end-to-end tests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
from openai import OpenAI

from tailorlm.config import Settings
from tailorlm.server import build_app
from tailorlm.server.lifecycle import TailorServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LiveServer:
    url: str
    app: object
    server: TailorServer

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def client(self, api_key: str = "unused", **kw) -> OpenAI:
        return OpenAI(base_url=self.base_url, api_key=api_key, max_retries=0, **kw)

    def http(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120, **kw)


@contextmanager
def live_server(settings: Settings) -> Iterator[LiveServer]:
    """Serve build_app(settings) on 127.0.0.1:<free port> until the block ends (graceful shutdown)."""
    app = build_app(settings)
    port = free_port()
    server = TailorServer(app, host="127.0.0.1", port=port, graceful_timeout=settings.graceful_timeout,
                          log_level="warning")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.02)
    try:
        yield LiveServer(f"http://127.0.0.1:{port}", app, server)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def post_valid(live: LiveServer, path: str, body: dict, schema: str) -> dict:
    """POST `body` to `path`; the answer must be a 200 whose body matches the OpenAI spec's `schema`."""
    from tests.spec import validate

    with live.http() as http:
        res = http.post(path, json=body)
    assert res.status_code == 200, res.text
    validate(res.json(), schema)
    return res.json()


def stream_chunks(live: LiveServer, body: dict) -> list[dict]:
    """POST a streamed chat completion; return its chunks, each validated against the OpenAI spec.

    The stream must end with `data: [DONE]`.
    """
    import json

    from tests.spec import validate

    with live.http() as http, http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as res:
        assert res.status_code == 200, res.read()
        lines = [line for line in res.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    for chunk in chunks:
        validate(chunk, "CreateChatCompletionStreamResponse")
    return chunks


@contextmanager
def served_process(home, **env: str) -> Iterator[tuple["subprocess.Popen", LiveServer]]:
    """`tailor serve` as a process of its own (its own session) on `home`, for fault tests that kill it with
    SIGKILL; a process still running when the block ends gets SIGTERM, then SIGKILL."""
    import os
    import signal
    import subprocess
    import sys

    port = free_port()
    environ = {**os.environ, "TAILOR_HOME": str(home), "TAILOR_PRELOAD": "false", "TAILOR_THREADS": "2", **env}
    proc = subprocess.Popen([sys.executable, "-m", "tailorlm", "serve", "--port", str(port)], env=environ,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    live = LiveServer(f"http://127.0.0.1:{port}", None, None)
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server process did not start")
            try:
                with live.http() as http:
                    if http.get("/health").status_code == 200:
                        break
            except httpx.TransportError:
                time.sleep(0.2)
        yield proc, live
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def kill9(proc: "subprocess.Popen") -> None:
    """SIGKILL a served_process's whole session: no shutdown hook, no flush, as a crash."""
    import os
    import signal

    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
