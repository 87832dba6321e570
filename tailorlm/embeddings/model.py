"""A sentence-embedding model: a transformers encoder plus the pooling and normalisation its
sentence-transformers config (modules.json, 1_Pooling/config.json) declares."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer, PreTrainedModel

from tailorlm.errors import InvalidRequestError, UnsupportedModelError
from tailorlm.hf_load import pretrained

BATCH = 32  # sequences per forward; sorted by length so that padding stays within a batch
POOLING_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max"}


@dataclass(frozen=True)
class Pipeline:
    """What sentence-transformers does after the encoder, read from the model's folder."""

    pooling: str  # "mean" | "cls" | "max"
    normalize: bool
    max_length: int  # tokens per input, [CLS] and [SEP] included


def read_pipeline(path: Path, config, tokenizer) -> Pipeline:
    """Defaults (mean pooling, L2 normalised) apply to a plain HF folder without sentence-transformers files."""
    modules = _json(path / "modules.json") or []
    pooling_dir = next((m.get("path", "") for m in modules if m.get("type", "").endswith(".Pooling")), "1_Pooling")
    pool_cfg = _json(path / pooling_dir / "config.json") or {"pooling_mode_mean_tokens": True}
    active = [k for k, v in pool_cfg.items() if k.startswith("pooling_mode") and v is True]
    if len(active) != 1 or active[0] not in POOLING_MODES:
        raise UnsupportedModelError(f"{path}: only one of mean, cls or max pooling is supported, not {active}.")
    normalize = not modules or any(m.get("type", "").endswith(".Normalize") for m in modules)
    limit = (_json(path / "sentence_bert_config.json") or {}).get("max_seq_length")
    if not limit:
        limit = min(config.max_position_embeddings, tokenizer.model_max_length)
    return Pipeline(POOLING_MODES[active[0]], normalize, int(limit))


def _json(path: Path) -> dict | list | None:
    return json.loads(path.read_text()) if path.is_file() else None


class EmbeddingModel:
    """`embed(inputs)` → unit vectors [n, dim] and the tokens each input used.

    Thread-safe: forwards are serialised by a lock (one forward already uses every core)."""

    def __init__(self, name: str, path: Path, model: PreTrainedModel, tokenizer, pipeline: Pipeline) -> None:
        self.name, self.path, self.model, self.tokenizer, self.pipeline = name, path, model, tokenizer, pipeline
        self.dim: int = model.config.hidden_size
        self.vocab_size: int = model.get_input_embeddings().num_embeddings
        self.pad_id: int = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.prefix, self.suffix = _special_affixes(tokenizer)
        self.load_seconds = 0.0
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: Path, name: str | None = None) -> "EmbeddingModel":
        """Local safetensors only: never the hub, never pickle."""
        start = time.perf_counter()
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = pretrained(AutoModel, path, local_files_only=True, use_safetensors=True, dtype=torch.float32)
        except (OSError, ValueError) as exc:
            raise UnsupportedModelError(f"cannot load an embedding model from {path}: {exc}") from None
        model.eval()
        self = cls(name or path.name, path, model, tokenizer, read_pipeline(path, model.config, tokenizer))
        self.load_seconds = time.perf_counter() - start
        return self

    @property
    def max_length(self) -> int:
        return self.pipeline.max_length

    def embed(self, inputs: Sequence[str] | Sequence[Sequence[int]]) -> tuple[np.ndarray, list[int]]:
        """Texts or token arrays → (float32 [n, dim], tokens per input including special tokens)."""
        seqs = self.encode(inputs)
        return self.embed_ids(seqs), [len(s) for s in seqs]

    def encode(self, inputs: Sequence[str] | Sequence[Sequence[int]]) -> list[list[int]]:
        """Validate and tokenize: the exact sequences the encoder will see. Never truncates."""
        if len(inputs) == 0:
            raise InvalidRequestError("input must not be empty.", param="input")
        texts = [i for i, x in enumerate(inputs) if isinstance(x, str)]
        for i in texts:
            if not inputs[i]:
                raise InvalidRequestError(f"input[{i}] is an empty string; every input must have text.", param="input")
        seqs: list[list[int] | None] = [None] * len(inputs)
        if texts:
            enc = self.tokenizer([inputs[i] for i in texts], add_special_tokens=True, truncation=False, verbose=False)
            for i, ids in zip(texts, enc["input_ids"]):
                seqs[i] = list(ids)
        for i, x in enumerate(inputs):
            if seqs[i] is None:
                seqs[i] = self._wrap(i, x)
            if len(seqs[i]) > self.max_length:
                raise InvalidRequestError(
                    f"input[{i}] is {len(seqs[i])} tokens long (special tokens included), but {self.name} embeds at "
                    f"most {self.max_length} tokens per input. Split it into shorter pieces.", param="input")
        return seqs  # type: ignore[return-value]

    def _wrap(self, index: int, ids: Sequence[int]) -> list[int]:
        """Token arrays are the text's word pieces; the special tokens are added as for text, unless present."""
        ids = [int(t) for t in ids]
        if not ids:
            raise InvalidRequestError(f"input[{index}] is an empty token array.", param="input")
        bad = next((t for t in ids if not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise InvalidRequestError(
                f"input[{index}] holds token id {bad}, outside {self.name}'s vocabulary (0..{self.vocab_size - 1}). "
                "Token arrays must come from this model's tokenizer; send text instead (a client that tokenizes "
                "with tiktoken, such as LangChain's OpenAIEmbeddings, needs check_embedding_ctx_length=False).",
                param="input")
        p, s = len(self.prefix), len(self.suffix)
        if (p or s) and len(ids) >= p + s and ids[:p] == self.prefix and ids[len(ids) - s:] == self.suffix:
            return ids
        return self.prefix + ids + self.suffix

    def embed_ids(self, seqs: Sequence[Sequence[int]]) -> np.ndarray:
        """Sequences as `encode` returns them → float32 [n, dim], in the order given."""
        out = np.empty((len(seqs), self.dim), dtype=np.float32)
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]), reverse=True)
        for start in range(0, len(order), BATCH):
            idx = order[start:start + BATCH]
            out[idx] = self._forward([seqs[i] for i in idx]).numpy()
        return out

    @torch.inference_mode()
    def _forward(self, seqs: list[Sequence[int]]) -> torch.Tensor:
        longest = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), longest), self.pad_id, dtype=torch.long)  # [B, S]
        mask = torch.zeros((len(seqs), longest), dtype=torch.long)  # [B, S]
        for row, s in enumerate(seqs):
            ids[row, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[row, : len(s)] = 1
        with self._lock:
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # [B, S, H]
        return pool(hidden, mask, self.pipeline)


def pool(hidden: torch.Tensor, mask: torch.Tensor, pipeline: Pipeline) -> torch.Tensor:
    """hidden [B, S, H], mask [B, S] → [B, H], as sentence-transformers' Pooling and Normalize modules do."""
    m = mask.unsqueeze(-1).to(hidden.dtype)  # [B, S, 1]
    if pipeline.pooling == "cls":
        vec = hidden[:, 0]
    elif pipeline.pooling == "max":
        vec = hidden.masked_fill(m == 0, -1e9).max(dim=1).values
    else:
        vec = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
    return F.normalize(vec, p=2, dim=1) if pipeline.normalize else vec


def _special_affixes(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts around a text (BERT: [CLS] … [SEP]), found by encoding a probe word."""
    plain = tokenizer("hello", add_special_tokens=False)["input_ids"]
    full = tokenizer("hello", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return list(full[:start]), list(full[start + len(plain):])
    return [], []
