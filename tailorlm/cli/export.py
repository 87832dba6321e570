"""`tailor export MODEL --format safetensors|gguf|onnx [--quant Q]`: a portable artifact, gated on parity."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from tailorlm.cli import app

_err = Console(stderr=True, soft_wrap=True)


@app.command("export")
def export_(
    model: Annotated[str, typer.Argument(help="A stored model or a tuned adapter (ft:…), merged into its base.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="safetensors, gguf or onnx.")] = "gguf",
    quant: Annotated[Optional[str], typer.Option(
        "--quant", "-q", help="safetensors: f32|f16|bf16; gguf: f32|f16|bf16|q8_0|q4_0 (default f16); onnx: f32|int8.")] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Store the artifact under this name "
                                                "(default: MODEL-FORMAT-QUANT).")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Also copy the artifact here "
                                                   "(the .gguf file; a folder for safetensors and ONNX).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an artifact of the same name.")] = False,
) -> None:
    """Export MODEL (an adapter is merged into its base first) as a verified artifact in the store.

    Golden prompts run through the source and the artifact; below the quantization's threshold of top-1
    agreement or above its KL ceiling, or with a tokenizer, template or EOS that differs, the export fails.
    """
    import sys

    from tailorlm.export import export

    result = export(model, fmt, quant, out_name=name, output=output, overwrite=force,
                    show_progress=sys.stderr.isatty())
    _err.print(f"parity: {result.parity.summary()}")
    if result.output is not None:
        _err.print(f"wrote {result.output}")
    _err.print(f"run it with `tailor generate {result.manifest.name} PROMPT` or `tailor serve`")
    typer.echo(result.manifest.name)
