"""`tailor export`: source → merged float32 folder → artifact → parity gate → the store (and `--output`).

The artifact is written into the store's staging area and published with one rename only after the parity
gate passes, so a failed or interrupted export leaves nothing behind. An exported artifact is a model like
any other: `tailor generate NAME`, `tailor serve NAME` and `/v1/models` pick the backend from its format.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tailorlm.backends import BACKEND_FOR_FORMAT, load_backend
from tailorlm.chat.tokenizer import generation_eos_ids
from tailorlm.config import Settings, get_settings
from tailorlm.engine.backend import Runner
from tailorlm.errors import AlreadyExistsError
from tailorlm.export.formats import ARTIFACT_FILE, Target, target
from tailorlm.export.parity import THRESHOLDS, ParityError, ParityReport, compare, golden_prompts
from tailorlm.export.source import Source, materialize, resolve
from tailorlm.export.tokenizer_check import tokenizer_problems
from tailorlm.store import Manifest, ModelStore
from tailorlm.store.architectures import check_export
from tailorlm.store.hf_folder import copy_model_files
from tailorlm.store.metadata import describe
from tailorlm.store.progress import Stages, quiet_transformers
from tailorlm.store.staging import Staging

PARITY_FILE = "parity.json"
QUANT_DTYPE = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}


@dataclass
class ExportResult:
    manifest: Manifest
    parity: ParityReport
    output: Path | None


def default_name(source: str, tgt: Target) -> str:
    return f"{source}{tgt.suffix}"


def export(name: str, fmt: str, quant: str | None = None, *, out_name: str | None = None,
           output: Path | None = None, overwrite: bool = False, settings: Settings | None = None,
           show_progress: bool = True, _tamper: Any = None) -> ExportResult:
    """Export `name` (a model or an `ft:` adapter) as `fmt`/`quant`; raises ParityError if the gate fails.

    `_tamper(folder)`, for tests only, changes the staged artifact before the gate (a broken template,
    a corrupted tensor) to prove the gate catches it.
    """
    settings = settings or get_settings()
    tgt = target(fmt, quant)
    store = ModelStore(settings.home)
    source = resolve(name, settings)
    check_export(source.base.model_type, tgt.format)
    key = out_name or default_name(source.name, tgt)
    if not overwrite:
        store.check_absent(key)
    if output is not None and output.exists() and not overwrite:
        raise AlreadyExistsError(f"{output} already exists; pass --force to replace it", param="output")
    reports: list[ParityReport] = []

    def fill(staged: Path, staging: Staging, stages: Stages) -> dict[str, Any]:
        _write(source, tgt, staged, staging, stages)
        if _tamper is not None:
            _tamper(staged)
        stages.stage("parity gate: golden prompts through the source and the artifact")
        provisional = Manifest(name=key, source=f"export:{source.name}", files={}, format=tgt.format,
                               quantization=tgt.quant, **describe(staged))
        report = gate(source, staged, tgt, provisional, settings)
        report.write(staged / PARITY_FILE)
        reports.append(report)
        if not report.passed:
            raise ParityError(f"export of {source.name} to {tgt.format} {tgt.quant} refused: {report.failure()}")
        return {"license_fallback": source.base.license}

    extra = {"format": tgt.format, "quantization": tgt.quant, "exported_from": source.name,
             "parameters": source.base.parameters, "dtype": tgt.quant}
    with quiet_transformers():
        manifest = store.add_artifact(key, f"export:{source.name}", fill, extra, overwrite=overwrite,
                                      show_progress=show_progress)
    written = _copy_out(store.path(key), tgt, output) if output is not None else None
    return ExportResult(manifest, reports[-1], written)


def _write(source: Source, tgt: Target, staged: Path, staging: Staging, stages: Stages) -> None:
    """Write the artifact for `tgt` into `staged`, beside the source's config, tokenizer and license."""
    if tgt.format == "safetensors":
        stages.stage(f"merging and writing {tgt.quant} safetensors" if source.adapter else
                     f"writing {tgt.quant} safetensors")
        materialize(source, staged, QUANT_DTYPE[tgt.quant])
        return
    stages.stage("merging the adapter into its base" if source.adapter else "reading the source weights")
    merged = materialize(source, staging.new_dir())
    copy_model_files(merged, staged, weights=False)
    if tgt.format == "gguf":
        from tailorlm.export.gguf import write_gguf

        stages.stage(f"writing GGUF {tgt.quant} (gguf, llama.cpp's writer)")
        write_gguf(merged, staged / ARTIFACT_FILE["gguf"], tgt.quant)
    else:
        from tailorlm.export.onnx import write_onnx

        stages.stage(f"exporting ONNX {tgt.quant} (torch.onnx)")
        onnx_dir = staging.new_dir() / "onnx"
        write_onnx(merged, onnx_dir, tgt.quant)
        for path in onnx_dir.iterdir():
            if path.name.startswith("model.onnx"):
                shutil.move(path, staged / path.name)


def gate(source: Source, folder: Path, tgt: Target, manifest: Manifest, settings: Settings) -> ParityReport:
    """Run the golden prompts through the source and the artifact in `folder`; check the tokenizers."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.base_path, local_files_only=True)
    src, adapter = source_runner(source)
    art = artifact_runner(folder, tgt, manifest, settings)
    eos = set(src_eos(source.base_path, tokenizer))
    report = compare(src, art, golden_prompts(tokenizer), eos, tgt.quant, adapter=adapter)
    report.tokenizer_problems = tokenizer_problems(source.base_path, folder, tgt.format)
    del art  # free the artifact's runtime (llama.cpp context, onnxruntime session) before the store publishes
    return report


def src_eos(folder: Path, tokenizer: Any) -> list[int]:
    return sorted({*generation_eos_ids(folder), *([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None
                                                   else [])})


def source_runner(source: Source) -> tuple[Runner, str | None]:
    """The source as the native engine runs it: float32 base, the adapter applied per row (not merged)."""
    import torch
    from safetensors.torch import load_file

    from tailorlm.engine import load_model
    from tailorlm.engine.lora import linear_features, lora_from_peft
    from tailorlm.store.peft import WEIGHTS_FILE, read_config

    loaded = load_model(source.base_path, dtype="float32")
    features = linear_features(loaded.model)
    runner = loaded.runner_factory(1, loaded.context_length)
    if source.adapter_path is None:
        return runner, None
    weights = lora_from_peft(read_config(source.adapter_path), load_file(source.adapter_path / WEIGHTS_FILE),
                             features, torch.float32)
    runner.lora.add(source.name, weights)
    return runner, source.name


def artifact_runner(folder: Path, tgt: Target, manifest: Manifest, settings: Settings) -> Runner:
    """The artifact as its backend runs it, with one slot."""
    if tgt.format == "safetensors":
        from tailorlm.engine import load_model

        loaded = load_model(folder, dtype="auto")
        return loaded.runner_factory(1, loaded.context_length)
    loaded = load_backend(BACKEND_FOR_FORMAT[tgt.format], folder, manifest, settings)
    return loaded.runner_factory(1, min(loaded.context_length, 4096))


def _copy_out(folder: Path, tgt: Target, output: Path) -> Path:
    """Copy the stored artifact to `output` (the .gguf file itself; a folder for the others), atomically."""
    output = output.expanduser().resolve()
    partial = output.with_name(output.name + ".partial")
    if partial.is_dir():
        shutil.rmtree(partial)
    else:
        partial.unlink(missing_ok=True)
    if tgt.format == "gguf":
        shutil.copyfile(folder / ARTIFACT_FILE["gguf"], partial)
    else:
        shutil.copytree(folder, partial)
    if output.is_dir():
        shutil.rmtree(output)
    partial.replace(output)
    return output


__all__ = ["ExportResult", "THRESHOLDS", "export", "default_name"]
