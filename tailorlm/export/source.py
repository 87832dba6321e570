"""What an export starts from: a stored model, or an `ft:` LoRA adapter merged into its base (with PEFT's
`merge_and_unload`), as one float32 Hugging Face folder that every writer reads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tailorlm.config import Settings
from tailorlm.errors import InvalidRequestError
from tailorlm.hf_load import pretrained
from tailorlm.store import AdapterManifest, AdapterStore, Manifest, ModelStore
from tailorlm.runtime.resolve import no_presets
from tailorlm.runtime.resolve import resolve as resolve_name
from tailorlm.store.hf_folder import copy_model_files


@dataclass
class Source:
    """The model being exported: its base's manifest, and the adapter (if any) on top."""

    name: str
    base: Manifest
    base_path: Path
    adapter: AdapterManifest | None
    adapter_path: Path | None

    @property
    def description(self) -> str:
        return f"{self.base.name} + {self.adapter.name}" if self.adapter else self.base.name


def resolve(name: str, settings: Settings) -> Source:
    """`name` as an export source (runtime/resolve.py); a preset or an exported artifact is refused (export
    what it runs on, or what it was made from)."""
    found = no_presets(resolve_name(name, settings), "export")
    store = ModelStore(settings.home)
    base = found.manifest or store.ensure(found.model, show_progress=True)
    if base.format != "safetensors":
        origin = base.exported_from or "the model it was made from"
        raise InvalidRequestError(f"{base.name} is already an exported {base.format} artifact; export from "
                                  f"{origin} instead", param="model")
    adapter = found.adapter
    return Source(found.name, base, store.path(base.name), adapter,
                  AdapterStore(settings.home).path(adapter.name) if adapter else None)


def materialize(source: Source, out: Path, dtype: str = "float32") -> Path:
    """Write `source` (merged, if it has an adapter) to `out` as an HF folder of `dtype` safetensors."""
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    model = pretrained(AutoModelForCausalLM, source.base_path, dtype=torch.float32, use_safetensors=True)
    if source.adapter_path is not None:
        from peft import PeftModel

        model = pretrained(PeftModel, model, source.adapter_path).merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    copy_model_files(source.base_path, out, weights=False)  # tokenizer, chat template, license, config
    model.to(torch_dtype).save_pretrained(out, safe_serialization=True)
    return out
