"""The PEFT LoRA adapter format, as `PeftModel.save_pretrained` writes it: config checks, tensor names, scaling.

No torch here: the store checks adapters with it at import, the engine maps tensors to modules with it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tailorlm.errors import InvalidRequestError, UnsafeFormatError, UnsupportedModelError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_FILE = "adapter_model.bin"
_KEY = re.compile(r"base_model\.model\.(?P<module>.+)\.lora_(?P<half>[AB])\.weight")

# Config fields that change what the adapter computes beyond x @ A^T @ B^T; set (truthy) means refused.
_UNSUPPORTED = {
    "use_dora": "DoRA",
    "lora_bias": "a LoRA bias",
    "modules_to_save": "modules_to_save (fully trained modules)",
    "trainable_token_indices": "trainable token embeddings",
    "target_parameters": "target_parameters (LoRA on raw parameters)",
    "layer_replication": "layer replication",
    "alora_invocation_tokens": "activated LoRA (aLoRA)",
    "use_qalora": "QALoRA",
}


@dataclass(frozen=True)
class LoraSpec:
    """What the engine needs from `adapter_config.json` beyond the tensors themselves."""

    rank: int
    alpha: float
    target_modules: list[str]
    use_rslora: bool = False
    alpha_pattern: dict[str, float] = field(default_factory=dict)

    def scale(self, module: str, rank: int) -> float:
        """PEFT's scaling for `module` with rank `rank` (taken from its tensors, so rank_pattern holds)."""
        alpha = next((float(a) for pat, a in self.alpha_pattern.items() if re.match(rf"(.*\.)?({pat})$", module)),
                     self.alpha)
        return alpha / (math.sqrt(rank) if self.use_rslora else rank)


def parse_config(config: dict) -> LoraSpec:
    """Check that `config` describes a plain LoRA adapter this engine can serve; return its facts."""
    if config.get("peft_type") != "LORA":
        raise UnsupportedModelError(f"the adapter is of PEFT type {config.get('peft_type')!r}; only LORA is supported")
    for key, what in _UNSUPPORTED.items():
        if config.get(key):
            raise UnsupportedModelError(f"the adapter uses {what}, which this engine does not serve")
    if config.get("bias", "none") != "none":
        raise UnsupportedModelError(f"the adapter trains biases (bias={config['bias']!r}); only bias='none' is served")
    rank, alpha, targets = config.get("r"), config.get("lora_alpha"), config.get("target_modules")
    if not isinstance(rank, int) or rank < 1 or not isinstance(alpha, (int, float)) or not targets:
        raise InvalidRequestError("adapter_config.json needs r (a positive integer), lora_alpha and target_modules")
    return LoraSpec(rank=rank, alpha=float(alpha), target_modules=[targets] if isinstance(targets, str) else sorted(targets),
                    use_rslora=bool(config.get("use_rslora")), alpha_pattern=dict(config.get("alpha_pattern") or {}))


def read_config(folder: Path) -> dict:
    """The folder's `adapter_config.json`; refuses a folder whose weights are pickle only."""
    if not (folder / CONFIG_FILE).is_file():
        raise InvalidRequestError(f"{folder} has no {CONFIG_FILE}, so it is not a PEFT adapter folder", param="path")
    if not (folder / WEIGHTS_FILE).is_file():
        if (folder / PICKLE_FILE).is_file():
            raise UnsafeFormatError(f"{folder} holds {PICKLE_FILE} only: pickle can run code, so it is refused; "
                                    "save the adapter with safe_serialization=True")
        raise InvalidRequestError(f"{folder} has no {WEIGHTS_FILE}", param="path")
    try:
        return json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"{folder / CONFIG_FILE} is not valid JSON: {exc}", param="path") from exc


def pair_keys(keys: Iterable[str]) -> dict[str, tuple[str, str]]:
    """Module path (as in the base model's named_modules) -> (lora_A key, lora_B key)."""
    halves: dict[str, dict[str, str]] = {}
    for key in keys:
        m = _KEY.fullmatch(key)
        if m is None:
            raise UnsupportedModelError(f"adapter tensor {key!r} is not a LoRA A/B weight; it cannot be served")
        halves.setdefault(m["module"], {})[m["half"]] = key
    if not halves:
        raise InvalidRequestError("the adapter holds no LoRA weights", param="path")
    for module, pair in halves.items():
        if len(pair) != 2:
            raise InvalidRequestError(f"the adapter has lora_A or lora_B of {module} but not both", param="path")
    return {module: (pair["A"], pair["B"]) for module, pair in sorted(halves.items())}
