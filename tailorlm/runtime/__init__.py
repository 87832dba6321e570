"""Ties the layers together for callers (the CLI, the server, eval): a name resolved (resolve.py), a stored
model opened as engine + tokenizer (model.py), and text generation streamed from it (textgen.py).

Names are exported lazily, so `tailorlm.runtime.resolve` (manifests only) imports without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "OpenModel": "model", "open_model": "model", "ChatSession": "session", "Completion": "textgen",
    "TextAssembler": "textgen", "TextDelta": "textgen", "chat_prompt": "textgen", "complete_all": "textgen",
    "stream_text": "textgen", "stream_chat": "textgen", "chat_plan": "textgen",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
