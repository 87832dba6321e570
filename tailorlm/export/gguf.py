"""Write an HF model folder as one self-contained GGUF file that llama.cpp (and Ollama, LM Studio) can run.

We use llama.cpp's own Python writer (`gguf`): its tensor-name tables, quantizers and special-vocab loader,
so the file is laid out as llama.cpp's `convert_hf_to_gguf.py` would lay it out. Only what llama.cpp
needs for the supported families is written: hyperparameters, tensors, and the byte-level BPE tokenizer.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tailorlm.engine.shape import ModelShape, text_config
from tailorlm.errors import InvalidRequestError, UnsupportedModelError
from tailorlm.store.architectures import ARCHITECTURES as TABLE

# HF model_type -> llama.cpp architecture (store/architectures.py). Mistral runs as llama in llama.cpp, as its
# converter writes it.
ARCHITECTURES = {t: a.gguf for t, a in TABLE.items() if a.gguf}
QUANTS = ("f32", "f16", "bf16", "q8_0", "q4_0")
Progress = Callable[[int, int], None]


def write_gguf(src: Path, out: Path, quant: str, *, progress: Progress | None = None) -> None:
    """Convert the HF folder `src` into the GGUF file `out`, quantized as `quant` (one of QUANTS)."""
    import gguf

    if quant not in QUANTS:
        raise InvalidRequestError(f"unknown GGUF quantization {quant!r}; choose one of {', '.join(QUANTS)}",
                                  param="quant")
    cfg = _read_json(src / "config.json")
    model_type = cfg.get("model_type", "?")
    if model_type not in ARCHITECTURES:
        raise UnsupportedModelError(f"GGUF export does not support model type {model_type!r}; "
                                    f"it supports {', '.join(ARCHITECTURES)}")
    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == ARCHITECTURES[model_type])
    partial = out.with_suffix(".partial")
    writer = gguf.GGUFWriter(partial, gguf.MODEL_ARCH_NAMES[arch])
    try:
        _add_hparams(writer, cfg, src, quant)
        _add_vocab(writer, src, cfg)
        tensors = _Tensors(src, cfg, arch, quant)
        for name, shape, qtype, nbytes in tensors.plan:
            writer.add_tensor_info(name, shape, np.dtype(np.float32), nbytes, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for done, data in enumerate(tensors.data(), 1):
            writer.write_tensor_data(data)
            if progress is not None:
                progress(done, len(tensors.plan))
        writer.close()
        with open(partial, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(partial, out)
    finally:
        writer.close()
        partial.unlink(missing_ok=True)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UnsupportedModelError(f"cannot read {path.name} in {path.parent}: {exc}") from None


# -- hyperparameters -----------------------------------------------------------------------------------
def _add_hparams(writer: Any, cfg: dict[str, Any], src: Path, quant: str) -> None:
    import gguf

    c, shape = text_config(cfg), ModelShape.of(cfg)
    writer.add_name(src.name)
    writer.add_block_count(shape.layers)
    writer.add_context_length(c.get("max_position_embeddings", 2048))
    writer.add_embedding_length(shape.hidden)
    writer.add_feed_forward_length(c["intermediate_size"])
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_layer_norm_rms_eps(c.get("rms_norm_eps", 1e-6))
    writer.add_vocab_size(shape.vocab)
    if shape.head_dim != shape.hidden // shape.heads:
        writer.add_key_length(shape.head_dim)
        writer.add_value_length(shape.head_dim)
    writer.add_rope_dimension_count(shape.head_dim)
    rope = {**(c.get("rope_parameters") or {}), **(c.get("rope_scaling") or {})}
    writer.add_rope_freq_base(float(rope.get("rope_theta", c.get("rope_theta", 10000.0))))
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif kind == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(rope["factor"]))
        writer.add_rope_scaling_orig_ctx_len(int(rope["original_max_position_embeddings"]))
    elif kind not in ("default", "llama3"):  # llama3 is written as a rope_freqs tensor (_Tensors)
        raise UnsupportedModelError(f"GGUF export does not support {kind!r} rope scaling")
    file_type = "ALL_F32" if quant == "f32" else f"MOSTLY_{quant.upper()}"
    writer.add_file_type(gguf.LlamaFileType[file_type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


# -- tokenizer -----------------------------------------------------------------------------------------
def _add_vocab(writer: Any, src: Path, cfg: dict[str, Any]) -> None:
    """Byte-level BPE ("gpt2" in llama.cpp): tokens in id order, their types, merges, special ids, template.

    The vocabulary is read through transformers, as the native runtime reads it (its model-specific classes may
    add tokens that tokenizer.json lacks); the pipeline checked is the one transformers actually runs.
    """
    import gguf
    from transformers import AutoTokenizer

    try:
        hf = AutoTokenizer.from_pretrained(src)
        tok = json.loads(hf.backend_tokenizer.to_str())
    except (OSError, ValueError, AttributeError) as exc:
        raise UnsupportedModelError(f"cannot read a fast tokenizer in {src}: {exc}") from None
    kind = tok.get("model", {}).get("type", "unknown")
    if kind != "BPE" or "ByteLevel" not in json.dumps(tok.get("pre_tokenizer")):
        raise UnsupportedModelError("GGUF export supports byte-level BPE tokenizers (GPT-2 style) only; "
                                    f"{src.name} has a {kind} tokenizer of another kind")
    n_vocab = ModelShape.of(cfg).vocab
    tokens = {i: t for t, i in hf.get_vocab().items()}
    if max(tokens) >= n_vocab:
        raise UnsupportedModelError(f"the tokenizer of {src.name} has ids beyond the model's {n_vocab} embeddings")
    added = hf.added_tokens_decoder
    types = {i: gguf.TokenType.NORMAL if i not in added else
             gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED for i in tokens}
    for i in range(n_vocab):  # rows of the embedding no token uses, padded as llama.cpp's converter does
        if i not in tokens:
            tokens[i], types[i] = f"[PAD{i}]", gguf.TokenType.UNUSED
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer(tok, cfg.get("model_type", ""), [tokens[i] for i in range(4)]))
    writer.add_token_list([tokens[i] for i in range(n_vocab)])
    writer.add_token_types([int(types[i]) for i in range(n_vocab)])
    special = gguf.SpecialVocab(src, load_merges=True, n_vocab=n_vocab)
    special.add_to_gguf(writer, quiet=True)
    if "bos" not in special.add_special_token:
        writer.add_add_bos_token(False)  # byte-level BPE rarely adds BOS; say so rather than let llama.cpp guess


# The first ids of SmolLM's vocabulary (HuggingFaceTB's cosmo2 tokenizer), recognisable even where a GGUF round
# trip through transformers dropped its digit-splitting step from tokenizer.json.
_SMOLLM_HEAD = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>"]


def _pre_tokenizer(tok: dict[str, Any], model_type: str, head: list[str]) -> str:
    """llama.cpp's name for the regex split this tokenizer applies before BPE (the converter hashes; we read)."""
    pre = tok.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    patterns = [json.dumps(s.get("pattern", {})) for s in steps if s.get("type") == "Split"]
    if model_type == "qwen2" or any(r"\\p{N}|" in p for p in patterns):
        return "qwen2"
    if any(r"\\p{N}{1,3}" in p for p in patterns):
        return "llama-bpe"
    if head == _SMOLLM_HEAD or ("Digits" in kinds and any(s.get("individual_digits") for s in steps)):
        return "smollm"  # SmolLM/SmolLM2: single digits, then GPT-2's split
    if kinds == ["ByteLevel"] and pre.get("use_regex", True):
        return "gpt-2"
    return "default"


# -- tensors -------------------------------------------------------------------------------------------
class _Tensors:
    """The model's tensors under llama.cpp's names, permuted and quantized, one at a time.

    `plan` (name, numpy shape, ggml type, bytes) is known from the safetensors headers alone, so the GGUF header
    is written first and then each tensor is read, converted and written: memory stays at one tensor.
    """

    def __init__(self, src: Path, cfg: dict[str, Any], arch: Any, quant: str) -> None:
        import gguf
        from safetensors import safe_open

        c = text_config(cfg)
        self.cfg, self.shape, self.arch, self.quant = c, ModelShape.of(cfg), arch, quant
        self.tied = self.shape.tied
        names = gguf.get_tensor_name_map(arch, self.shape.layers)
        allowed = set(gguf.MODEL_TENSORS[arch])
        files = sorted(src.glob("*.safetensors"))
        if not files:
            raise UnsupportedModelError(f"{src} holds no safetensors weights to export")
        rope = {**(c.get("rope_parameters") or {}), **(c.get("rope_scaling") or {})}
        self.llama3_rope = rope if rope.get("rope_type", rope.get("type")) == "llama3" else None
        self.plan: list[tuple[str, tuple[int, ...], Any, int]] = []
        self.sources: list[tuple[Any, str, Any]] = []  # (safetensors handle, key, MODEL_TENSOR) per plan entry
        if self.llama3_rope is not None:
            self._add("rope_freqs.weight", (self.shape.head_dim // 2,), None, "", None)
        for handle in (safe_open(str(f), framework="pt") for f in files):
            for key in handle.keys():
                if key.endswith("rotary_emb.inv_freq") or (self.tied and key == "lm_head.weight"):
                    continue
                found = names.get_type_and_name(key, try_suffixes=(".weight", ".bias"))
                if found is None or found[0] not in allowed:
                    raise UnsupportedModelError(f"GGUF export does not know where tensor {key!r} goes in llama.cpp")
                self._add(found[1], tuple(handle.get_slice(key).get_shape()), handle, key, found[0])

    def _add(self, name: str, shape: tuple[int, ...], handle: Any, key: str, kind: Any) -> None:
        from gguf import GGML_QUANT_SIZES

        qtype = self._qtype(name, shape)
        block, size = GGML_QUANT_SIZES[qtype]
        self.plan.append((name, shape, qtype, math.prod(shape) // block * size))
        self.sources.append((handle, key, kind))

    def _qtype(self, name: str, shape: tuple[int, ...]) -> Any:
        """Norms and biases stay f32; a row not a whole number of blocks falls back to f16, as in llama.cpp."""
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

        if len(shape) <= 1 or self.quant == "f32":
            return T.F32
        want = T[self.quant.upper()]
        if want == T.Q4_0 and (name == "output.weight" or (self.tied and name == "token_embd.weight")):
            want = T.Q8_0  # the output projection is the most sensitive; llama-quantize also keeps it wider
        if shape[-1] % GGML_QUANT_SIZES[want][0] != 0:
            return T.F16
        return want

    def data(self) -> Iterator[np.ndarray]:
        """The tensors' bytes, in `plan` order."""
        import gguf

        llama = gguf.MODEL_ARCH_NAMES[self.arch] == "llama"
        q_k = {gguf.MODEL_TENSOR.ATTN_Q: self.shape.heads, gguf.MODEL_TENSOR.ATTN_K: self.shape.kv_heads}
        for (_, _, qtype, _), (handle, key, kind) in zip(self.plan, self.sources):
            if handle is None:
                yield self._llama3_factors()
                continue
            t = handle.get_tensor(key).float()
            if llama and kind in q_k:
                t = _permute(t, q_k[kind])
            yield gguf.quants.quantize(t.numpy(), qtype)

    def _llama3_factors(self) -> np.ndarray:
        """Llama 3.1's per-frequency rope scaling, precomputed as llama.cpp's `rope_freqs` tensor."""
        r, c, dim = self.llama3_rope, self.cfg, self.shape.head_dim
        base = float(r.get("rope_theta", c.get("rope_theta", 10000.0)))
        factor, old = r.get("factor", 8.0), r.get("original_max_position_embeddings", 8192)
        lo, hi = r.get("low_freq_factor", 1.0), r.get("high_freq_factor", 4.0)
        out = []
        for freq in 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float64) / dim):
            wavelen = 2 * math.pi / freq
            if wavelen < old / hi:
                out.append(1.0)
            elif wavelen > old / lo:
                out.append(factor)
            else:
                smooth = (old / wavelen - lo) / (hi - lo)
                out.append(1.0 / ((1 - smooth) / factor + smooth))
        return np.array(out, dtype=np.float32)


def _permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp rotates interleaved pairs of q/k rows; HF rotates the two halves of each head."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
