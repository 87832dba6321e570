"""One model load at a time: transformers' `from_pretrained` is not thread-safe.

Two loads at once in one process can leave a parameter on the meta device (transformers 5.25: three threads
loading SmolLM2 together each got one meta tensor), and the server does load in threads: the default model at
startup, another model on request, an export or evaluation job beside them. Every weight load in tailorlm goes
through `pretrained`, which holds one process-wide lock (reentrant: PEFT loads inside a base's load are fine).
"""

from __future__ import annotations

import threading
from typing import Any

LOAD_LOCK = threading.RLock()


def pretrained(cls: Any, *args: Any, **kwargs: Any) -> Any:
    """`cls.from_pretrained(*args, **kwargs)` while no other thread of this process loads weights."""
    with LOAD_LOCK:
        return cls.from_pretrained(*args, **kwargs)


def causal_lm(path: Any, **kwargs: Any) -> Any:
    """`AutoModelForCausalLM` from `path` with SDPA attention, or eager where the architecture has no SDPA
    (gemma2's logit softcapping, gpt-oss's attention sinks); other ValueErrors pass through."""
    from transformers import AutoModelForCausalLM

    try:
        return pretrained(AutoModelForCausalLM, path, attn_implementation="sdpa", **kwargs)
    except ValueError as exc:
        if "sdpa" not in str(exc).lower() and "attention" not in str(exc).lower():
            raise
    return pretrained(AutoModelForCausalLM, path, attn_implementation="eager", **kwargs)
