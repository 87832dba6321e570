"""Load a stored model for the engine: verify digests, pick dtype and attention, read limits."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, GenerationConfig, PreTrainedModel

from tailorlm.engine import decoder
from tailorlm.engine.backend import RunnerFactory
from tailorlm.engine.cpu import int8_activation_dtype
from tailorlm.engine.runner import ModelRunner
from tailorlm.engine.shape import ModelShape
from tailorlm.errors import InvalidRequestError, UnsupportedModelError
from tailorlm.hf_load import causal_lm

KERNELS = ("native", "torch")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


@dataclass
class LoadedModel:
    """A model ready for the engine, with the token-level facts it needs and the factory of its runners.

    The native backend also holds the transformers `model`; for another backend (llama.cpp, onnxruntime)
    `model` is None and only its `runner_factory` holds what it loaded.
    """

    name: str
    path: Path
    model: PreTrainedModel | None
    context_length: int
    vocab_size: int
    eos_token_ids: list[int]
    load_seconds: float
    runner_factory: RunnerFactory
    model_type: str = ""
    backend: str = "native"
    int8: bool = False  # weight-only int8 linear layers (the runner quantizes them; activations: engine/cpu.py)
    q4: bool = False  # with int8: 4-bit blocks for the linear layers the C++ step reads (the head stays int8)
    compile: bool = False  # torch.compile the torch decode step
    kernels: str = "native"  # decode step of Llama-family models: native (C++) or torch


def eos_ids(path: Path, *configs) -> list[int]:
    """EOS ids from the folder's generation_config.json, then from `configs` (config objects), in order."""
    ids: list[int] = []
    sources = list(configs)
    try:
        sources.insert(0, GenerationConfig.from_pretrained(path))
    except (OSError, ValueError):
        pass
    for src in sources:
        eos = getattr(src, "eos_token_id", None) if src is not None else None
        for tok in eos if isinstance(eos, (list, tuple)) else [eos]:
            if tok is not None and tok not in ids:
                ids.append(int(tok))
    return ids


def load_model(path: Path, *, name: str | None = None, dtype: str = "auto", compile: bool = False,
               kernels: str = "native") -> LoadedModel:
    """Load an HF-format folder (safetensors only) as a causal LM for the engine.

    `dtype` "int8" loads the int8 activation dtype (bfloat16 where the CPU multiplies it natively, else float32)
    and has the runner quantize every linear layer to int8 (weight-only). `dtype` "q4" loads the same way and
    has the runner quantize the linear layers but the output head to 4-bit blocks of 32 (Q4Linear; the head
    and tied embedding stay int8) where the native C++ step runs, else int8.
    """
    start = time.perf_counter()
    if kernels not in KERNELS:
        raise InvalidRequestError(f"unknown kernels {kernels!r}: use {' or '.join(KERNELS)}", param="kernels")
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise UnsupportedModelError(f"cannot read the model config in {path}: {exc}") from None
    q4 = dtype == "q4"
    int8 = dtype == "int8" or q4
    if int8:
        # int8 weights; everything that is not a linear layer in the activation dtype this CPU runs fastest
        dtype = "bfloat16" if int8_activation_dtype() is torch.bfloat16 else "float32"
    elif dtype != "auto" and dtype not in DTYPES:
        raise InvalidRequestError(f"unknown dtype {dtype!r}: use auto, {', '.join(DTYPES)}, int8 or q4",
                                  param="dtype")
    torch_dtype = DTYPES.get(dtype, "auto") if dtype != "auto" else "auto"
    kwargs = dict(dtype=torch_dtype, use_safetensors=True)
    if torch_dtype is torch.float64:
        kwargs["experts_implementation"] = "eager"  # grouped_mm (MoE, e.g. gpt-oss) has no float64 kernel
    try:
        model = causal_lm(path, **kwargs)
    except ValueError as exc:
        raise UnsupportedModelError(f"transformers cannot load {path} as a causal LM: {exc}") from None
    model.eval()
    if compile:
        why = decoder.unsupported(model, window=None) if int8 else \
            "it needs dtype int8 (oneDNN-packed float weights cannot be traced)"
        if why:
            raise InvalidRequestError(f"cannot compile the decode step of {name or path.name}: {why}", param="compile")
    shape = ModelShape.of(config)
    return LoadedModel(
        name=name or path.name, path=path, model=model, context_length=shape.max_context,
        vocab_size=shape.vocab, eos_token_ids=eos_ids(path, getattr(model, "generation_config", None), model.config),
        load_seconds=time.perf_counter() - start,
        runner_factory=RunnerFactory(ModelRunner, model, dict(int8=int8, q4=q4, compile=compile, kernels=kernels)),
        model_type=model.config.model_type, int8=int8, q4=q4, compile=compile, kernels=kernels,
    )
