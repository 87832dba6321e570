"""Facts about an HF-format model folder, read from its files without loading any weights."""

from __future__ import annotations

import json
import math
import re
import struct
from collections import Counter
from pathlib import Path
from typing import Any

# safetensors dtype codes -> the torch names used in config.json
_ST_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32",
    "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
}
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx")
_MAX_HEADER = 100 * 1024 * 1024


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`, or {} if the file is absent."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a .safetensors file: tensor name -> {dtype, shape, data_offsets}."""
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path.name} is too short to be a safetensors file")
        (length,) = struct.unpack("<Q", raw)
        if length > _MAX_HEADER:
            raise ValueError(f"{path.name} has an implausible safetensors header ({length} bytes)")
        header = json.loads(fh.read(length))
    header.pop("__metadata__", None)
    return header


def tensor_stats(folder: Path) -> tuple[int, str | None]:
    """(parameter count, dominant dtype) summed over every top-level .safetensors file."""
    total, by_dtype = 0, Counter[str]()
    for path in sorted(folder.glob("*.safetensors")):
        for info in safetensors_header(path).values():
            numel = math.prod(info["shape"])
            total += numel
            by_dtype[info["dtype"]] += numel
    dominant = by_dtype.most_common(1)[0][0] if by_dtype else None
    return total, _ST_DTYPES.get(dominant, dominant.lower() if dominant else None)


def readme_license(folder: Path) -> str | None:
    """The `license:` of a README.md model card's YAML front matter, if any."""
    readme = folder / "README.md"
    if not readme.is_file():
        return None
    text = readme.read_text(encoding="utf-8", errors="replace")
    front = re.match(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", text, re.DOTALL)
    found = front and re.search(r"^license:\s*(.+?)\s*$", front.group(1), re.MULTILINE)
    return found.group(1).strip("'\"") or None if found else None


def has_chat_template(folder: Path) -> bool:
    """Whether the tokenizer files carry a chat template (inline, .jinja or .json)."""
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    if any((folder / "additional_chat_templates").glob("*.jinja")):
        return True
    return bool(read_json(folder / "tokenizer_config.json").get("chat_template"))


def describe(folder: Path, license_hint: str | None = None, license_fallback: str | None = None) -> dict[str, Any]:
    """The manifest fields that come from the model files themselves."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config = read_json(folder / "config.json")
    model_type = config.get("model_type", "unknown")
    architectures = config.get("architectures") or [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type, "unknown")]
    parameters, tensor_dtype = tensor_stats(folder)
    context = next((config[k] for k in _CONTEXT_KEYS if isinstance(config.get(k), int)), None)
    license_ = license_hint or readme_license(folder) or config.get("license") or license_fallback
    return dict(
        architecture=architectures[0],
        model_type=model_type,
        parameters=parameters,
        context_length=context,
        dtype=config.get("dtype") or config.get("torch_dtype") or tensor_dtype,
        license=license_,
        has_chat_template=has_chat_template(folder),
    )
