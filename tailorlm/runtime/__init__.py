"""Ties the layers together for callers (the CLI, the server, eval): a name resolved (resolve.py), a stored
model opened as engine + tokenizer (model.py), and text generation streamed from it (textgen.py).

Names are exported lazily, so `tailorlm.runtime.resolve` (manifests only) imports without torch.
"""

from __future__ import annotations

from tailorlm.lazy import exports

_EXPORTS = {
    "OpenModel": "model", "open_model": "model", "ChatSession": "session", "Completion": "textgen",
    "TextAssembler": "textgen", "TextDelta": "textgen", "chat_prompt": "textgen", "complete_all": "textgen",
    "stream_text": "textgen", "stream_chat": "textgen", "chat_plan": "textgen",
}
__all__ = list(_EXPORTS)

__getattr__ = exports(__name__, _EXPORTS)
