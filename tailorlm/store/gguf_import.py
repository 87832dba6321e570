"""Import a GGUF file: dequantize it with transformers and store it as an HF folder (safetensors)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from tailorlm.errors import InvalidRequestError, TailorError, UnsupportedModelError
from tailorlm.hf_load import pretrained
from tailorlm.store.architectures import architecture
from tailorlm.store.progress import Stages, quiet_transformers

_KEYS = ("general.architecture", "general.name", "general.license", "tokenizer.chat_template")


def read_metadata(path: Path) -> dict[str, Any]:
    """The few GGUF metadata strings the store records (license, name, chat template)."""
    import gguf

    try:
        reader = gguf.GGUFReader(path)
    except Exception as exc:
        raise InvalidRequestError(f"{path} is not a readable GGUF file ({exc})", param="path") from exc
    out: dict[str, Any] = {}
    for key in _KEYS:
        field = reader.get_field(key)
        if field is None:
            continue
        if hasattr(field, "contents"):
            out[key] = field.contents()
        else:  # older gguf-py: a string's bytes are the part the first data index points at
            out[key] = bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")
    return out


def _isolate(path: Path, scratch: Path) -> Path:
    """Expose the file alone in `scratch`, so transformers cannot pick up stray files next to it."""
    link = scratch / path.name
    try:
        os.symlink(path.resolve(), link)
    except OSError:  # no symlinks (e.g. Windows without privileges): fall back to a copy
        shutil.copyfile(path, link)
    return link


def convert_gguf(path: Path, dst: Path, scratch: Path, stages: Stages) -> dict[str, Any]:
    """Write `path` as a float32 HF folder in `dst`; returns its GGUF metadata."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    stages.stage("reading GGUF")
    meta = read_metadata(path)
    link = _isolate(path, scratch)
    folder, name = str(link.parent), link.name
    with quiet_transformers():
        try:
            config = AutoConfig.from_pretrained(folder, gguf_file=name)
            architecture(config.model_type, "import")
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            stages.stage("dequantizing")
            loaded = pretrained(AutoModelForCausalLM, folder, gguf_file=name, dtype=torch.float32)
        except TailorError:
            raise
        except Exception as exc:  # transformers raises many kinds for an architecture or tokenizer it lacks
            arch = meta.get("general.architecture", "unknown")
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UnsupportedModelError(
                f"transformers cannot load the GGUF {path.name} (architecture {arch!r}): {first}"
            ) from exc
        stages.stage("writing safetensors")
        # save_pretrained refuses a GGUF-loaded (quantizer-tagged) model: move the weights to a plain one.
        state = loaded.state_dict()
        del loaded
        config.architectures = None
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(state, strict=True)
        del state
        model.save_pretrained(dst)
        del model
        template = meta.get("tokenizer.chat_template")
        if template and not tokenizer.chat_template:
            tokenizer.chat_template = template
        if getattr(config, "max_position_embeddings", None):
            tokenizer.model_max_length = config.max_position_embeddings
        tokenizer.save_pretrained(dst)
    return meta
