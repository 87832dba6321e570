"""Token-level inference: load weights, schedule requests, batch, sample. No text, no HTTP.

Names are exported lazily (tailorlm/lazy.py), so `tailorlm.engine.cpu` and `tailorlm.engine.shape` import without torch.
"""

from __future__ import annotations

from tailorlm.lazy import exports

_EXPORTS = {"Engine": "engine", "RequestHandle": "engine", "LoadedModel": "loader", "load_model": "loader",
            "SamplingParams": "types", "TokenEvent": "types"}
__all__ = list(_EXPORTS)
__getattr__ = exports(__name__, _EXPORTS)
