"""Import an HF-format folder: check it is a supported causal LM, copy the files we keep, refuse or convert pickle."""

from __future__ import annotations

import fnmatch
import shutil
from pathlib import Path

from tailorlm.errors import InvalidRequestError, UnsafeFormatError, UnsafeLinkError, UnsupportedModelError
from tailorlm.store.architectures import architecture

# What the store keeps of a model folder (also the hub download filter). Patterns without "/" match
# top-level files only.
MODEL_FILE_PATTERNS: tuple[str, ...] = (
    "config.json", "generation_config.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "vocab.txt", "merges.txt", "*.model", "*.tiktoken",
    "chat_template.jinja", "chat_template.json", "additional_chat_templates/*.jinja",
    "README.md", "LICENSE", "LICENSE.*", "NOTICE",
    "*.safetensors", "model.safetensors.index.json",
)
PICKLE_PATTERNS: tuple[str, ...] = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt")


def _matches(rel: str, patterns: tuple[str, ...]) -> bool:
    """fnmatch where "*" never crosses a folder boundary."""
    return any(rel.count("/") == p.count("/") and fnmatch.fnmatch(rel, p) for p in patterns)


def _files(folder: Path, patterns: tuple[str, ...]) -> list[Path]:
    found = sorted(p for p in folder.rglob("*") if p.is_file() and _matches(p.relative_to(folder).as_posix(), patterns))
    for path in found:
        check_inside(path, folder)
    return found


def check_inside(path: Path, folder: Path) -> None:
    """Refuse a file of an imported folder that is a link leading out of it: a `LICENSE` linked to ~/.ssh/id_rsa
    would be copied into the store, listed in its manifest and packed into bundles.

    The one exception is a Hugging Face cache snapshot (`models--org--name/snapshots/<rev>/`), whose files are
    links into the same repository's `blobs/`: that is still the model's own folder.
    """
    target, root = path.resolve(), folder.resolve()
    allowed = [root]
    if root.parent.name == "snapshots":
        allowed.append(root.parent.parent / "blobs")
    if not any(target.is_relative_to(a) for a in allowed):
        raise UnsafeLinkError(f"{path.relative_to(folder)} in {folder} is a link to {target}, outside the folder; "
                                "copy the file itself into the folder to import it")


def pickle_weights(folder: Path) -> list[Path]:
    """Pickle weight files in `folder` (top level)."""
    return _files(folder, PICKLE_PATTERNS)


def load_config(folder: Path):  # -> PretrainedConfig
    """The folder's config via AutoConfig; UnsupportedModelError unless it is a causal LM transformers knows
    of an architecture tailorlm supports (store/architectures.py)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if not (folder / "config.json").is_file():
        raise UnsupportedModelError(f"{folder} has no config.json, so it is not a Hugging Face model folder")
    try:
        config = AutoConfig.from_pretrained(str(folder))
    except Exception as exc:  # transformers raises ValueError/KeyError/OSError/JSONDecodeError here
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsupportedModelError(f"transformers cannot read the config.json in {folder}: {first}") from exc
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise UnsupportedModelError(
            f"{folder} holds a {config.model_type!r} model, which is not a causal language model transformers can run"
        )
    architecture(config.model_type, "import")
    return config


def check_weights(folder: Path, allow_pickle: bool) -> list[Path]:
    """Pickle files to convert ([] when safetensors are present); refuses pickle unless allowed."""
    if any(folder.glob("*.safetensors")):
        return []
    pickles = pickle_weights(folder)
    if not pickles:
        raise InvalidRequestError(
            f"{folder} holds no model weights (no *.safetensors, *.gguf or pytorch_model.bin files)", param="path"
        )
    if not allow_pickle:
        names = ", ".join(p.name for p in pickles[:3]) + (", ..." if len(pickles) > 3 else "")
        raise UnsafeFormatError(
            f"{folder} holds only pickle weights ({names}), which can run code when loaded; "
            "re-run with --allow-pickle if you trust it"
        )
    return pickles


WEIGHT_PATTERNS: tuple[str, ...] = ("*.safetensors", "model.safetensors.index.json")


def copy_model_files(src: Path, dst: Path, *, move: bool = False, weights: bool = True) -> None:
    """Copy (or move, for a download we own) the files the store keeps from `src` into `dst`; with
    `weights=False`, only config, tokenizer, chat template and license (what an exported artifact carries along)."""
    patterns = MODEL_FILE_PATTERNS if weights else tuple(p for p in MODEL_FILE_PATTERNS if p not in WEIGHT_PATTERNS)
    for path in _files(src, patterns):
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        if move:
            shutil.move(path, target)
        else:
            shutil.copyfile(path, target)  # follows symlinks, e.g. into an HF cache's blobs


def convert_pickle(files: list[Path], dst: Path, tie_word_embeddings: bool) -> None:
    """Load pickle weights with `weights_only=True` and write them as `dst/model.safetensors`."""
    import torch
    from safetensors.torch import save_file

    state: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise UnsafeFormatError(f"{path.name} could not be loaded as plain tensors ({exc}); refused") from exc
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise UnsupportedModelError(f"{path.name} is not a state dict of tensors")
        state.update(obj)
    save_file(dedupe_shared(state, tie_word_embeddings), dst / "model.safetensors", metadata={"format": "pt"})


def dedupe_shared(state: dict, tie_word_embeddings: bool) -> dict:
    """safetensors refuses shared storage: drop a tied lm_head (transformers re-ties it), clone the rest."""
    seen: dict[int, tuple] = {}
    out = {}
    # lm_head last, so that a tied pair keeps the input embedding and drops the head.
    for key in sorted(state, key=lambda k: k.endswith("lm_head.weight")):
        tensor = state[key]
        ptr = tensor.untyped_storage().data_ptr()
        alias = (tensor.storage_offset(), tuple(tensor.shape), tensor.stride())
        if tensor.numel() and ptr in seen:
            if tie_word_embeddings and key.endswith("lm_head.weight") and seen[ptr] == alias:
                continue
            tensor = tensor.clone()
        elif tensor.numel():
            seen[ptr] = alias
        out[key] = tensor.contiguous()
    return out
