"""`tailor generate` and `tailor chat`: one-shot and interactive generation on a stored model."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.console import Console

from tailorlm.backends import BACKENDS
from tailorlm.cli import app
from tailorlm.config import get_settings
from tailorlm.errors import InvalidRequestError

if TYPE_CHECKING:  # the runtime (torch) is imported when a command runs, not for `tailor --help`
    from tailorlm.engine import SamplingParams
    from tailorlm.presets.grounding import Source
    from tailorlm.runtime import OpenModel

MaxTokens = Annotated[Optional[int], typer.Option("--max-tokens", "-n", help="Most tokens to generate.")]
Temperature = Annotated[Optional[float], typer.Option("--temperature", "-t", help="0 is greedy.")]
TopP = Annotated[Optional[float], typer.Option("--top-p", help="Nucleus sampling mass.")]
TopK = Annotated[Optional[int], typer.Option("--top-k", help="Keep the k likeliest tokens (0: all).")]
Seed = Annotated[Optional[int], typer.Option("--seed", help="Seed for reproducible sampling.")]
Stop = Annotated[Optional[list[str]], typer.Option("--stop", help="Stop string (repeatable).")]
System = Annotated[Optional[str], typer.Option("--system", "-s", help="System prompt (a preset's own is the default).")]
Backend = Annotated[Optional[str], typer.Option(
    "--backend", help="native, llama.cpp or onnxruntime (default: by the model's artifact) [env TAILOR_BACKEND].")]
Dtype = Annotated[Optional[str], typer.Option(
    "--dtype", help="Native compute dtype: auto, float32, bfloat16, float16, int8 or q4 (weight-only) "
    "[env TAILOR_DTYPE].")]
Compile = Annotated[bool, typer.Option(
    "--compile", help="torch.compile the torch decode step (int8, Llama-family; ~1 min at start) [env TAILOR_COMPILE].")]
Kernels = Annotated[Optional[str], typer.Option(
    "--kernels", help="Decode step of Llama-family models: native (C++, built on first use) or torch "
    "[env TAILOR_KERNELS].")]


def _params(model: OpenModel, defaults: dict[str, Any], **flags: Any) -> tuple[SamplingParams, list[str]]:
    from tailorlm.engine import SamplingParams
    from tailorlm.runtime.session import preset_params

    """Sampling from the flags given, then a preset's defaults, then the command's `defaults`; the preset's stops."""
    given = {k: v for k, v in flags.items() if v is not None}
    return preset_params(model, SamplingParams(**{**defaults, **given}), set(given))


def _split_model_and_prompt(args: list[str]) -> tuple[str | None, str]:
    if len(args) == 1:
        return None, args[0]
    if len(args) == 2:
        return args[0], args[1]
    raise InvalidRequestError("give a prompt, or a model and a prompt: tailor generate [MODEL] PROMPT")


def _open(name: str | None, backend: str | None = None, dtype: str | None = None, compile: bool = False,
          kernels: str | None = None) -> OpenModel:
    from tailorlm.runtime import open_model

    settings = get_settings()
    if backend is not None:
        if backend not in BACKENDS:
            raise InvalidRequestError(f"unknown backend {backend!r}: use {', '.join(BACKENDS)}", param="backend")
        settings = settings.model_copy(update={"backend": backend})
    if dtype is not None:
        settings = settings.model_copy(update={"dtype": dtype})
    if compile:
        settings = settings.model_copy(update={"compile": True})
    if kernels is not None:
        settings = settings.model_copy(update={"kernels": kernels})  # checked where the model loads
    return open_model(name, settings=settings, show_progress=sys.stderr.isatty())


@app.command()
def generate(
    args: Annotated[list[str], typer.Argument(metavar="[MODEL] PROMPT",
                                              help="Model, adapter or preset (default: the embedded model) and prompt.")],
    max_tokens: MaxTokens = None,
    temperature: Temperature = None,
    top_p: TopP = None,
    top_k: TopK = None,
    seed: Seed = None,
    stop: Stop = None,
    system: System = None,
    raw: Annotated[bool, typer.Option("--raw", help="Plain completion: no chat template.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of streaming text.")] = False,
    backend: Backend = None,
    dtype: Dtype = None,
    compile: Compile = False,
    kernels: Kernels = None,
) -> None:
    """Answer one prompt and exit (scriptable); a chat rendered exactly as the API renders it."""
    from tailorlm.runtime import ChatSession, Completion, stream_text

    name, prompt = _split_model_and_prompt(args)
    model = _open(name, backend, dtype, compile, kernels)
    try:
        params, preset_stops = _params(model, {"max_tokens": 256, "temperature": 0.0}, max_tokens=max_tokens,
                                       temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
        stops = stop or preset_stops
        result = Completion()
        session = ChatSession(model, params, system, stops)
        if raw:
            ids = model.tokenizer.encode(prompt, add_special_tokens=True)
            pieces = ((d.text, None) for d in stream_text(model, ids, params, stops, result))
        else:
            pieces = ((d.content, d.reasoning) for d in session.send(prompt, result))
        content, reasoning = [], []
        for text, thought in pieces:
            content.append(text or "")
            reasoning.append(thought or "")
            if text and not as_json:
                sys.stdout.write(text)
                sys.stdout.flush()
        if as_json:
            body: dict[str, Any] = {
                "model": model.preset.ref if model.preset is not None else model.name,
                "text": "".join(content),
                "finish_reason": result.finish_reason,
                "usage": {
                    "prompt_tokens": result.prompt_tokens,
                    "completion_tokens": result.completion_tokens,
                    "total_tokens": result.prompt_tokens + result.completion_tokens,
                },
                "seconds": round(result.seconds, 3),
                "tokens_per_second": round(result.tokens_per_second, 2),
            }
            if "".join(reasoning):
                body["reasoning"] = "".join(reasoning)
            if session.sources:
                body["sources"] = [s.model_dump() for s in session.sources]
            print(json.dumps(body, ensure_ascii=False))
        else:
            sys.stdout.write("\n")
            _print_sources(session.sources)
    finally:
        model.close()


def _print_sources(sources: list[Source]) -> None:
    """A preset's sources for the last answer, on stderr (stdout stays the answer)."""
    err = Console(stderr=True, highlight=False)
    for s in sources:
        err.print(f"[{s.index}] {s.filename}" + (f" — {s.heading}" if s.heading else ""), style="dim")


CHAT_HELP = "Commands: /reset (forget the conversation), /system TEXT (set the system prompt), /bye (leave). Ctrl-C stops an answer."


@app.command()
def chat(
    model_name: Annotated[Optional[str], typer.Argument(
        metavar="[MODEL]", help="Model, adapter or preset (default: the embedded model).")] = None,
    max_tokens: MaxTokens = None,
    temperature: Temperature = None,
    top_p: TopP = None,
    top_k: TopK = None,
    seed: Seed = None,
    system: System = None,
    backend: Backend = None,
    dtype: Dtype = None,
    compile: Compile = False,
    kernels: Kernels = None,
) -> None:
    """Chat interactively, with streamed answers and history."""
    from tailorlm.runtime import ChatSession, chat_plan

    console = Console(highlight=False)
    model = _open(model_name, backend, dtype, compile, kernels)
    params, stops = _params(model, {"max_tokens": 512, "temperature": 0.7, "top_p": 0.95},
                            max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
    session = ChatSession(model, params, system, stops)
    interactive = sys.stdin.isatty()
    chat_plan(model, [{"role": "user", "content": "hi"}])  # no template: fail now, not at the first turn
    console.print(f"[bold]{model.name}[/bold] — {CHAT_HELP}", style="dim")
    try:
        while True:
            try:
                line = console.input("[bold green]>>> [/bold green]") if interactive else input()
            except EOFError:
                break
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                cmd, _, arg = line.partition(" ")
                if cmd in ("/bye", "/exit", "/quit"):
                    break
                if cmd == "/reset":
                    session.reset()
                    console.print("conversation cleared", style="dim")
                elif cmd == "/system":
                    session.system = arg.strip() or None
                    console.print(f"system prompt {'set' if session.system else 'cleared'}", style="dim")
                else:
                    console.print(CHAT_HELP, style="dim")
                continue
            stream = session.send(line)
            try:
                for delta in stream:
                    if delta.content:
                        sys.stdout.write(delta.content)
                        sys.stdout.flush()
            except KeyboardInterrupt:  # stop this answer, stay in the chat
                stream.close()
                sys.stdout.write(" [stopped]")
            sys.stdout.write("\n")
            sys.stdout.flush()
            _print_sources(session.sources)
    except KeyboardInterrupt:
        pass
    finally:
        model.close()
