"""Run a stored GGUF artifact with llama.cpp behind the shared engine (scheduler, sampling, API unchanged).

We drive llama.cpp's low-level C API through llama-cpp-python: scheduler slot b is llama.cpp sequence b
in one context whose KV cache is unified, i.e. one pool of cells shared by all sequences, so a short
request leaves room for a long one and copying a slot is a metadata change, not a buffer copy.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tailorlm.backends import require
from tailorlm.engine.backend import NoAdapters, RunnerCapabilities, RunnerFactory
from tailorlm.engine.loader import LoadedModel
from tailorlm.errors import TailorError, UnsupportedModelError

if TYPE_CHECKING:
    from tailorlm.config import Settings
    from tailorlm.store import Manifest

GGUF_FILE = "model.gguf"
POOL_TOKENS = 16384  # KV cells shared by all slots when max_slots * context_length would be larger
GGML_F32, FLASH_ATTN_DISABLED = 0, 0  # enum values of ggml_type and llama_flash_attn_type
MIN_BATCH = 512  # tokens per llama_decode call; longer prefills are split

_state: dict[str, Any] = {}  # the backend-init flag and the no-op log callback (ctypes must keep it alive)


def _llama() -> Any:
    """Import llama_cpp (or say how to install it), initialise its backend once and silence its logging."""
    llama_cpp = require("llama.cpp")
    if "log" not in _state:
        _state["log"] = llama_cpp.llama_log_callback(lambda level, text, user_data: None)
        llama_cpp.llama_log_set(_state["log"], ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
    return llama_cpp


class GGUFModel:
    """A llama.cpp model (weights only, no context), freed when the last runner using it is gone."""

    def __init__(self, path: Path) -> None:
        self.lib = _llama()
        if not path.is_file():
            raise UnsupportedModelError(f"{path.parent} holds no {path.name} for the llama.cpp backend")
        params = self.lib.llama_model_default_params()
        params.n_gpu_layers = 0
        self.ptr = self.lib.llama_model_load_from_file(str(path).encode(), params)
        if not self.ptr:
            raise UnsupportedModelError(f"llama.cpp could not load {path}; the file is damaged or its architecture "
                                        "is not one this llama.cpp build supports")
        self.vocab = self.lib.llama_model_get_vocab(self.ptr)
        self.n_vocab = int(self.lib.llama_vocab_n_tokens(self.vocab))
        self.n_ctx_train = int(self.lib.llama_model_n_ctx_train(self.ptr))
        self.full_precision = self.meta("general.file_type") == "0"  # an f32 export, made for exact parity

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(4096)
        n = self.lib.llama_model_meta_val_str(self.ptr, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", errors="replace") if n >= 0 else None

    def eos_token_ids(self) -> list[int]:
        """End-of-generation ids the file declares: eos, then end-of-turn and end-of-message if set."""
        ids = [self.meta(f"tokenizer.ggml.{k}_token_id") for k in ("eos", "eot", "eom")]
        return list(dict.fromkeys(int(i) for i in ids if i is not None))

    def __del__(self) -> None:
        if getattr(self, "ptr", None):
            self.lib.llama_model_free(self.ptr)
            self.ptr = None


def load(path: Path, manifest: Manifest, settings: Settings) -> LoadedModel:
    """Load `path/model.gguf` for the engine; each engine builds its own context via `runner_factory`."""
    start = time.perf_counter()
    model = GGUFModel(path / GGUF_FILE)
    context = model.n_ctx_train
    if manifest.context_length:
        context = min(context, manifest.context_length)
    threads = settings.threads or torch.get_num_threads()
    return LoadedModel(
        name=manifest.name, path=path, model=None, context_length=context, vocab_size=model.n_vocab,
        eos_token_ids=model.eos_token_ids(), load_seconds=time.perf_counter() - start,
        runner_factory=RunnerFactory(LlamaCppRunner, model, {"threads": threads}),
        model_type=model.meta("general.architecture") or "", backend="llama.cpp",
    )


class LlamaCppRunner:
    """The engine's `Runner` over one llama.cpp context: slot b is sequence id b."""

    capabilities = RunnerCapabilities()  # adapters are merged at export; no prefix cache, no KV budget

    def __init__(self, model: GGUFModel, *, max_slots: int, context_length: int, threads: int,
                 pool_tokens: int = POOL_TOKENS) -> None:
        lib = self.lib = model.lib
        self.model = model  # keeps the weights alive as long as this context
        self.lora = NoAdapters("llama.cpp")
        if max_slots > lib.llama_max_parallel_sequences():
            raise UnsupportedModelError(f"llama.cpp runs at most {lib.llama_max_parallel_sequences()} sequences at "
                                        f"once; lower max_batch from {max_slots}")
        params = lib.llama_context_default_params()
        params.n_ctx = min(max_slots * context_length, max(context_length, pool_tokens))
        params.n_seq_max = max_slots
        params.kv_unified = True
        params.n_batch = params.n_ubatch = self.n_batch = max(MIN_BATCH, max_slots)
        params.n_outputs_max = 0  # up to n_batch logits rows per call,
        params.n_outputs_max_per_seq = 0  # any of them from one sequence (prefill with all_logits)
        params.n_threads = params.n_threads_batch = threads
        params.embeddings = False
        if model.full_precision:  # f32 weights: keep the KV cache and attention in f32 too (no f16 flash attention)
            params.type_k = params.type_v = GGML_F32
            params.flash_attn_type = FLASH_ATTN_DISABLED
        params.no_perf = True
        self.ctx = lib.llama_init_from_model(model.ptr, params)
        if not self.ctx:
            raise TailorError(f"llama.cpp could not create a context of {params.n_ctx} tokens for {max_slots} "
                              "slots; lower max_batch or free memory")
        self.cells = int(lib.llama_n_ctx(self.ctx))
        self.memory = lib.llama_get_memory(self.ctx)
        self.batch = lib.llama_batch_init(self.n_batch, 0, 1)
        self.vocab = model.n_vocab

    # -- forwards ----------------------------------------------------------------------------------------
    def prefill(self, slot: int, token_ids: list[int], start: int, all_logits: bool = False,
                adapter: str | None = None) -> torch.Tensor:
        """Write `token_ids` at positions start.. of sequence `slot`; logits [len(token_ids) or 1, vocab]."""
        self.lora.refuse([adapter])
        self.lib.llama_memory_seq_rm(self.memory, slot, start, -1)
        rows = []
        for at in range(0, len(token_ids), self.n_batch):
            chunk = token_ids[at : at + self.n_batch]
            last = at + len(chunk) == len(token_ids)
            wanted = [all_logits or (last and i == len(chunk) - 1) for i in range(len(chunk))]
            self._fill(chunk, [start + at + i for i in range(len(chunk))], [slot] * len(chunk), wanted)
            rows.append(self._run(sum(wanted)))
        return torch.from_numpy(np.concatenate(rows))

    def decode(self, token_ids: list[int], positions: list[int],
               adapters: Sequence[str | None] | None = None) -> torch.Tensor:
        """Row b feeds token_ids[b] at positions[b] into sequence b, all rows in one batch; logits [B, vocab]."""
        self.lora.refuse(adapters)
        b = len(token_ids)
        self._fill(token_ids, positions, list(range(b)), [True] * b)
        return torch.from_numpy(self._run(b))

    def move_slot(self, src: int, dst: int, length: int) -> None:
        """Sequence dst takes over positions [0, length) of src; src is left empty."""
        self.lib.llama_memory_seq_rm(self.memory, dst, -1, -1)
        self.lib.llama_memory_seq_cp(self.memory, src, dst, 0, length)
        self.lib.llama_memory_seq_rm(self.memory, src, -1, -1)

    # -- helpers -----------------------------------------------------------------------------------------
    def _fill(self, tokens: list[int], positions: list[int], seqs: list[int], logits: list[bool]) -> None:
        batch = self.batch
        batch.n_tokens = len(tokens)
        for i, (tok, pos, seq, out) in enumerate(zip(tokens, positions, seqs, logits)):
            batch.token[i] = tok
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = out

    def _run(self, n_out: int) -> np.ndarray:
        rc = self.lib.llama_decode(self.ctx, self.batch)
        if rc == 1:
            raise TailorError(f"llama.cpp's KV cache ({self.cells} tokens shared by all running requests) is full; "
                              "retry, or serve fewer or shorter requests at once")
        if rc != 0:
            raise TailorError(f"llama.cpp failed to evaluate the batch (llama_decode returned {rc})")
        if n_out == 0:  # an early chunk of a long prefill
            return np.empty((0, self.vocab), dtype=np.float32)
        logits = np.ctypeslib.as_array(self.lib.llama_get_logits(self.ctx), shape=(n_out, self.vocab))
        return logits.copy()  # the buffer is overwritten by the next call

    def close(self) -> None:
        """Free the batch and the context (idempotent); the model is freed when no runner holds it."""
        if getattr(self, "ctx", None):
            self.lib.llama_batch_free(self.batch)
            self.lib.llama_free(self.ctx)
            self.ctx = None

    def __del__(self) -> None:
        self.close()
