"""`tailor generate` and `tailor chat`: one-shot and interactive generation on a stored model."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer
from rich.console import Console

from tailorlm.backends import BACKENDS
from tailorlm.cli import app
from tailorlm.config import get_settings
from tailorlm.engine import SamplingParams
from tailorlm.errors import InvalidRequestError
from tailorlm.runtime import ChatSession, Completion, OpenModel, chat_prompt, open_model, stream_text

MaxTokens = Annotated[Optional[int], typer.Option("--max-tokens", "-n", help="Most tokens to generate.")]
Temperature = Annotated[float, typer.Option("--temperature", "-t", help="0 is greedy.")]
TopP = Annotated[float, typer.Option("--top-p", help="Nucleus sampling mass.")]
TopK = Annotated[int, typer.Option("--top-k", help="Keep the k likeliest tokens (0: all).")]
Seed = Annotated[Optional[int], typer.Option("--seed", help="Seed for reproducible sampling.")]
Stop = Annotated[Optional[list[str]], typer.Option("--stop", help="Stop string (repeatable).")]
System = Annotated[Optional[str], typer.Option("--system", "-s", help="System prompt.")]
Backend = Annotated[Optional[str], typer.Option(
    "--backend", help="native, llama.cpp or onnxruntime (default: by the model's artifact) [env TAILOR_BACKEND].")]
Dtype = Annotated[Optional[str], typer.Option(
    "--dtype", help="Native compute dtype: auto, float32, bfloat16, float16 or int8 (weight-only) [env TAILOR_DTYPE].")]
Compile = Annotated[bool, typer.Option(
    "--compile", help="torch.compile the torch decode step (int8, Llama-family; ~1 min at start) [env TAILOR_COMPILE].")]
Kernels = Annotated[Optional[str], typer.Option(
    "--kernels", help="Decode step of Llama-family models: native (C++, built on first use) or torch "
    "[env TAILOR_KERNELS].")]


def _params(max_tokens: int | None, temperature: float, top_p: float, top_k: int, seed: int | None) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)


def _split_model_and_prompt(args: list[str]) -> tuple[str | None, str]:
    if len(args) == 1:
        return None, args[0]
    if len(args) == 2:
        return args[0], args[1]
    raise InvalidRequestError("give a prompt, or a model and a prompt: tailor generate [MODEL] PROMPT")


def _open(name: str | None, backend: str | None = None, dtype: str | None = None, compile: bool = False,
          kernels: str | None = None) -> OpenModel:
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
    args: Annotated[list[str], typer.Argument(metavar="[MODEL] PROMPT", help="Model (default: the embedded one) and prompt.")],
    max_tokens: MaxTokens = 256,
    temperature: Temperature = 0.0,
    top_p: TopP = 1.0,
    top_k: TopK = 0,
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
    """Answer one prompt and exit (scriptable)."""
    name, prompt = _split_model_and_prompt(args)
    params = _params(max_tokens, temperature, top_p, top_k, seed)
    model = _open(name, backend, dtype, compile, kernels)
    try:
        if raw:
            ids = model.tokenizer.encode(prompt, add_special_tokens=True)
        else:
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
            ids = chat_prompt(model, messages)
        result = Completion()
        for delta in stream_text(model, ids, params, stop, result):
            if not as_json:
                sys.stdout.write(delta.text)
                sys.stdout.flush()
        if as_json:
            print(json.dumps({
                "model": model.name,
                "text": result.text,
                "finish_reason": result.finish_reason,
                "usage": {
                    "prompt_tokens": result.prompt_tokens,
                    "completion_tokens": result.completion_tokens,
                    "total_tokens": result.prompt_tokens + result.completion_tokens,
                },
                "seconds": round(result.seconds, 3),
                "tokens_per_second": round(result.tokens_per_second, 2),
            }, ensure_ascii=False))
        else:
            sys.stdout.write("\n")
    finally:
        model.close()


CHAT_HELP = "Commands: /reset (forget the conversation), /system TEXT (set the system prompt), /bye (leave). Ctrl-C stops an answer."


@app.command()
def chat(
    model_name: Annotated[Optional[str], typer.Argument(metavar="[MODEL]", help="Model (default: the embedded one).")] = None,
    max_tokens: MaxTokens = 512,
    temperature: Temperature = 0.7,
    top_p: TopP = 0.95,
    top_k: TopK = 0,
    seed: Seed = None,
    system: System = None,
    backend: Backend = None,
    dtype: Dtype = None,
    compile: Compile = False,
    kernels: Kernels = None,
) -> None:
    """Chat interactively, with streamed answers and history."""
    console = Console(highlight=False)
    model = _open(model_name, backend, dtype, compile, kernels)
    params = _params(max_tokens, temperature, top_p, top_k, seed)
    session = ChatSession(model, params, system)
    interactive = sys.stdin.isatty()
    chat_prompt(model, [{"role": "user", "content": "hi"}])  # no template: fail now, not at the first turn
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
                    sys.stdout.write(delta.text)
                    sys.stdout.flush()
            except KeyboardInterrupt:  # stop this answer, stay in the chat
                stream.close()
                sys.stdout.write(" [stopped]")
            sys.stdout.write("\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass
    finally:
        model.close()
