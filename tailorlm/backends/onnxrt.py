"""Runs an exported ONNX decoder (tailorlm.export.onnx) with onnxruntime behind the shared engine.

Each slot keeps its KV cache as one numpy array [2 * layers, kv_heads, capacity, head_dim] (keys and values
interleaved per layer), grown by doubling. Decode batches its rows in one run: every row's past is copied into a
[B, kv_heads, longest, head_dim] batch with right padding, which the graph's attention_mask hides (past key j sits
at position j in the exported graph), and each row's new key/value is written back at its own position.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tailorlm.backends import require
from tailorlm.engine.backend import NoAdapters, RunnerCapabilities, RunnerFactory
from tailorlm.engine.loader import LoadedModel, eos_ids
from tailorlm.engine.shape import ModelShape
from tailorlm.errors import InvalidRequestError, UnsupportedModelError

if TYPE_CHECKING:
    from tailorlm.config import Settings
    from tailorlm.store import Manifest


MODEL_FILE = "model.onnx"
_PAST = re.compile(r"past_key_values\.(\d+)\.(key|value)$")
_MIN_CAPACITY = 64


class OnnxRunner:
    """The `Runner` for one onnxruntime session; slot b's cache lives in `self.slots[b]`."""

    capabilities = RunnerCapabilities()  # adapters are merged at export; no prefix cache, no KV budget

    def __init__(self, session: Any, *, max_slots: int, context_length: int) -> None:
        self.session = session
        self.lora = NoAdapters("onnxruntime")
        inputs = {i.name: i for i in session.get_inputs()}
        pasts = sorted((int(m.group(1)), m.group(2)) for n in inputs if (m := _PAST.match(n)))
        self.layers = len(pasts) // 2
        if self.layers == 0 or {"input_ids", "position_ids", "attention_mask"} - inputs.keys():
            raise UnsupportedModelError("the ONNX graph is not a tailorlm decoder export (it lacks input_ids, "
                                        "position_ids, attention_mask or past_key_values.* inputs)")
        self.past_names = [f"past_key_values.{i}.{k}" for i in range(self.layers) for k in ("key", "value")]
        _, self.kv_heads, _, self.head_dim = inputs[self.past_names[0]].shape
        if not (isinstance(self.kv_heads, int) and isinstance(self.head_dim, int)):
            raise UnsupportedModelError("the ONNX graph's past_key_values have no fixed kv_heads/head_dim")
        self.output_names = ["logits"] + [f"present.{i}.{k}" for i in range(self.layers) for k in ("key", "value")]
        self.max_slots = max_slots
        self.context_length = context_length
        self.slots: list[np.ndarray | None] = [None] * max_slots

    # -- cache ---------------------------------------------------------------------------
    def _reserve(self, slot: int, length: int) -> np.ndarray:
        """Slot `slot`'s cache with room for `length` positions, grown by doubling (contents kept)."""
        if not 0 <= slot < self.max_slots:
            raise IndexError(f"slot {slot} is outside 0..{self.max_slots - 1}")
        if length > self.context_length:
            raise InvalidRequestError(f"{length} positions exceed the context length {self.context_length}")
        cache = self.slots[slot]
        capacity = 0 if cache is None else cache.shape[2]
        if capacity >= length:
            return cache
        new_cap = min(max(length, 2 * capacity, _MIN_CAPACITY), self.context_length)
        grown = np.zeros((2 * self.layers, self.kv_heads, new_cap, self.head_dim), dtype=np.float32)
        if cache is not None:
            grown[:, :, :capacity] = cache
        self.slots[slot] = grown
        return grown

    def _run(self, ids: np.ndarray, pos: np.ndarray, mask: np.ndarray, past: np.ndarray) -> list[np.ndarray]:
        """ids/pos [B, S], mask [B, P+S], past [2 * layers, B, kv_heads, P, head_dim] -> logits, presents."""
        feed = {"input_ids": ids, "position_ids": pos, "attention_mask": mask}
        feed.update({name: past[j] for j, name in enumerate(self.past_names)})
        return self.session.run(self.output_names, feed)

    # -- forwards --------------------------------------------------------------------------
    def prefill(self, slot: int, token_ids: list[int], start: int, all_logits: bool = False,
                adapter: str | None = None) -> torch.Tensor:
        """Write `token_ids` at positions start.. of `slot`; logits [len(token_ids) or 1, vocab]."""
        self.lora.refuse([adapter])
        n = len(token_ids)
        cache = self._reserve(slot, start + n)
        past = np.ascontiguousarray(cache[:, None, :, :start])  # [2L, 1, kv, start, hd]
        ids = np.asarray([token_ids], dtype=np.int64)
        pos = np.arange(start, start + n, dtype=np.int64)[None]
        logits, *present = self._run(ids, pos, np.ones((1, start + n), dtype=np.int64), past)
        for j, tensor in enumerate(present):  # [1, kv, start + n, hd]: keep the n new positions
            cache[j, :, start:start + n] = tensor[0, :, start:]
        out = logits[0] if all_logits else logits[0, -1:]
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))

    def decode(self, token_ids: list[int], positions: list[int],
               adapters: Sequence[str | None] | None = None) -> torch.Tensor:
        """Row b feeds token_ids[b] at positions[b] into slot b; logits [B, vocab]."""
        self.lora.refuse(adapters)
        b, longest = len(token_ids), max(positions)
        caches = [self._reserve(row, p + 1) for row, p in enumerate(positions)]
        past = np.zeros((2 * self.layers, b, self.kv_heads, longest, self.head_dim), dtype=np.float32)
        mask = np.zeros((b, longest + 1), dtype=np.int64)
        mask[:, longest] = 1
        for row, (cache, p) in enumerate(zip(caches, positions)):
            past[:, row, :, :p] = cache[:, :, :p]
            mask[row, :p] = 1
        ids = np.asarray(token_ids, dtype=np.int64)[:, None]
        pos = np.asarray(positions, dtype=np.int64)[:, None]
        logits, *present = self._run(ids, pos, mask, past)
        for row, (cache, p) in enumerate(zip(caches, positions)):
            for j, tensor in enumerate(present):  # [B, kv, longest + 1, hd]: the new key/value is last
                cache[j, :, p] = tensor[row, :, longest]
        return torch.from_numpy(np.ascontiguousarray(logits[:, -1], dtype=np.float32))

    def move_slot(self, src: int, dst: int, length: int) -> None:
        """Slot `src`'s cache becomes slot `dst`'s; src is free afterwards, so the arrays just swap."""
        self.slots[dst], self.slots[src] = self.slots[src], self.slots[dst]


def session_for(model_file: Path, threads: int = 0) -> Any:
    """An onnxruntime CPU session over `model_file` with `threads` intra-op threads (0: torch's count)."""
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    # onnxruntime's pool must not spin between runs: the engine thread's sampling (torch, OpenMP) runs in between,
    # and two spinning pools on the same cores halve decode (54.8 vs 106 tok/s on SmolLM2 int8, 2 threads)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(str(model_file), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        raise UnsupportedModelError(f"onnxruntime cannot load {model_file}: {str(exc).splitlines()[0]}") from exc


def load(path: Path, manifest: Manifest | None, settings: Settings | None) -> LoadedModel:
    """Open the ONNX export in `path` (model.onnx + config files) as a LoadedModel for the engine."""
    require("onnxruntime")
    from transformers import AutoConfig

    start = time.perf_counter()
    path = Path(path)
    if not (path / MODEL_FILE).is_file():
        raise UnsupportedModelError(f"{path} holds no {MODEL_FILE}; export one with `tailor export --format onnx`")
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise UnsupportedModelError(f"cannot read the model config in {path}: {exc}") from None
    session = session_for(path / MODEL_FILE, getattr(settings, "threads", 0) or 0)
    shape = ModelShape.of(config)
    width = session.get_outputs()[0].shape[-1]
    if isinstance(width, int) and width != shape.vocab:
        raise UnsupportedModelError(f"the ONNX graph's logits have {width} columns but config.json says "
                                    f"vocab_size {shape.vocab}")
    factory = RunnerFactory(OnnxRunner, session)
    factory(1, 1)  # checks the graph's inputs now, not in the engine thread
    return LoadedModel(
        name=manifest.name if manifest is not None else path.name, path=path, model=None,
        context_length=shape.max_context, vocab_size=shape.vocab,
        eos_token_ids=eos_ids(path, config),
        load_seconds=time.perf_counter() - start, runner_factory=factory, model_type=config.model_type,
        backend="onnxruntime",
    )
