"""Load a model's tokenizer from a local folder and expose the few things the text layer needs."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tailorlm.errors import UnsupportedModelError


class TextTokenizer:
    """A thin wrapper over a Hugging Face tokenizer: text <-> token ids, stop ids, chat template."""

    def __init__(self, hf: Any, *, name: str, extra_eos_ids: Iterable[int] = ()) -> None:
        self.hf = hf
        self.name = name
        self.eos_token_ids: list[int] = _unique_ints([hf.eos_token_id, *extra_eos_ids])

    @property
    def has_chat_template(self) -> bool:
        """True when the tokenizer carries a (jinja) chat template."""
        return bool(self.hf.chat_template)

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can produce, added tokens included."""
        return len(self.hf)

    @property
    def bos_token_id(self) -> int | None:
        """The beginning-of-sequence id, if the tokenizer has one."""
        return self.hf.bos_token_id

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text` as plain text; `add_special_tokens` adds the model's BOS/EOS convention.

        A control token written inside `text` (a user typing "<|im_end|>") is encoded as the characters it is made
        of, never as the control token: text from a request or a document must not be able to end a turn or open
        a system message. Only a chat template (template.py) places control tokens.
        """
        return list(self.hf.encode(text, add_special_tokens=add_special_tokens, split_special_tokens=True))

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids`, without the legacy "clean up tokenization spaces" rewrite.

        That rewrite (" ." -> ".") is not local to a token, so it would make streamed text
        differ from the whole decode; it also corrupts code, so it is never applied.
        """
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False)

    def __repr__(self) -> str:
        return f"TextTokenizer({self.name!r}, vocab_size={self.vocab_size}, eos={self.eos_token_ids})"


def load_tokenizer(model_dir: Path, *, name: str | None = None, gguf_file: str | None = None) -> TextTokenizer:
    """Load the tokenizer saved in the local folder `model_dir` (never the hub)."""
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    label = name or model_dir.name
    if not model_dir.is_dir():
        raise UnsupportedModelError(f"Cannot load the tokenizer of model {label!r}: {model_dir} is not a folder.")
    kwargs: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    try:
        hf = AutoTokenizer.from_pretrained(model_dir, **kwargs)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UnsupportedModelError(f"Cannot load the tokenizer of model {label!r} from {model_dir}: {exc}") from exc
    return TextTokenizer(hf, name=label, extra_eos_ids=generation_eos_ids(model_dir))


def generation_eos_ids(model_dir: Path) -> list[int]:
    """EOS id(s) from generation_config.json, else from config.json (an int or a list in either)."""
    for fname in ("generation_config.json", "config.json"):
        path = model_dir / fname
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        value = data.get("eos_token_id") if isinstance(data, dict) else None
        return _unique_ints(value if isinstance(value, list) else [value])
    return []


def _unique_ints(values: Iterable[Any]) -> list[int]:
    """Integers of `values`, first occurrence order, Nones and non-ints dropped."""
    out: list[int] = []
    for v in values:
        if isinstance(v, int) and not isinstance(v, bool) and v >= 0 and v not in out:
            out.append(v)
    return out
