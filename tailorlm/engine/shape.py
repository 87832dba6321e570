"""A model's shape as its Hugging Face config declares it, read in one place with one set of defaults.

The runner sizes its KV cache from it, the decode steps their heads, the plan its memory, the exporters their
graphs and headers: all must agree on what an absent `num_key_value_heads` or `head_dim` means and on when a
sliding window applies, so none of them reads those keys itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")
DEFAULT_CONTEXT = 2048


def text_config(config: Any) -> Any:
    """The text model's part of `config` (a transformers config, or config.json as a dict); itself if plain."""
    if isinstance(config, Mapping):
        return config.get("text_config") or config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    value = cfg.get(key) if isinstance(cfg, Mapping) else getattr(cfg, key, None)
    return default if value is None else value


@dataclass(frozen=True)
class ModelShape:
    """Layers, heads and sizes of a decoder, with the defaults transformers applies (0 where a config without
    attention, e.g. a state-space model's, has no such field)."""

    layers: int
    heads: int
    kv_heads: int  # cached heads: num_key_value_heads, else heads (no grouped-query attention); 1 for MLA
    head_dim: int  # a cached key's width: head_dim, else hidden // heads; MLA: the compressed latent's
    hidden: int
    vocab: int
    window: int | None  # the sliding window's length where some layer slides; None where none does
    per_layer_masks: bool  # layer_types names sliding layers: the model takes a mask per layer type (gemma2/3)
    tied: bool  # the output head shares the embedding's weights
    max_context: int  # positions the model was trained for (DEFAULT_CONTEXT where the config says none)
    v_head_dim: int = 0  # a cached value's width where it differs from a key's (MLA: the rotary key part); else 0

    @property
    def value_dim(self) -> int:
        return self.v_head_dim or self.head_dim

    @classmethod
    def of(cls, config: Any) -> ModelShape:
        """The shape of `config`: a transformers config object or a config.json dict (its text part if composite)."""
        cfg = text_config(config)
        heads, hidden = _get(cfg, "num_attention_heads", 0), _get(cfg, "hidden_size", 0)
        layer_types = _get(cfg, "layer_types") or []
        per_layer = "sliding_attention" in layer_types
        # layer_types, where given, says which layers slide; else use_sliding_window turns a window off (qwen2)
        slides = per_layer or (not layer_types and _get(cfg, "use_sliding_window", True) is not False)
        # multi-head latent attention (DeepSeek-V2/V3) caches one compressed latent and one rotary key per position
        latent = _get(cfg, "kv_lora_rank")
        context = next((v for k in CONTEXT_KEYS if isinstance(v := _get(cfg, k), int) and v > 0), DEFAULT_CONTEXT)
        return cls(
            layers=_get(cfg, "num_hidden_layers", 0), heads=heads,
            kv_heads=1 if latent else _get(cfg, "num_key_value_heads") or heads,
            head_dim=latent or _get(cfg, "head_dim") or (hidden // heads if heads else 0),
            hidden=hidden, vocab=_get(cfg, "vocab_size", 0),
            window=_get(cfg, "sliding_window") if slides else None, per_layer_masks=per_layer,
            tied=bool(_get(cfg, "tie_word_embeddings", _get(config, "tie_word_embeddings", False))),
            max_context=context, v_head_dim=_get(cfg, "qk_rope_head_dim", 0) if latent else 0,
        )
