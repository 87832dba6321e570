"""The native decode step: every layer of a Llama-family decode step in one C++ call (csrc/decode_step.cpp).

Each row is a (slot, position): a decode batch is one row per running request, a prompt is rows of one slot
at successive positions (a causal prefill, since every row's key and value is cached before any row attends).

The lean step (decoder.py) still pays a torch dispatch for each of its ~700 operators per step, about as
long as the matmuls' memory traffic on a small model. The C++ step reads the same weights in place and runs
the whole step inside one OpenMP parallel region of torch's own runtime (docs/decisions.md).

It is built on first use by torch's extension builder, for this CPU (`-march=native`), and its kernels are
chosen by the instruction sets that build has: AVX-512 (with VNNI and BF16 where the CPU has them), AVX2 with
FMA, or plain loops the compiler vectorizes (the correctness reference). The `isa` setting forces a narrower
set on a wider CPU (avx2 on an AVX-512 machine, generic anywhere), so every path is tested on any machine.
Builds go into a cache folder keyed by the CPU's features, the ISA, torch's version and the source, so a build
is reused and a home folder shared between different machines never loads code built for another CPU.
"""

from __future__ import annotations

import hashlib
import logging
import platform
import threading
from collections.abc import Sequence
from pathlib import Path

import platformdirs
import torch
from torch import nn

from tailorlm.config import get_settings
from tailorlm.engine.cpu import cpu_flags
from tailorlm.engine.decoder import PROJECTIONS, LeanDecoder
from tailorlm.engine.layout import Int8Embedding, Int8Linear, Q4Linear
from tailorlm.engine.lora import LoraBank
from tailorlm.errors import InvalidRequestError

log = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "csrc" / "decode_step.cpp"
# every file of the step, headers included, keys the build: torch's builder would not see a header change
SOURCES = sorted((Path(__file__).parent / "csrc").glob("*.[ch]*"))
FLAGS = ["-O3", "-march=native", "-fopenmp",
         # let float reductions vectorize; no finite-math assumption (softmax uses -inf)
         "-fno-math-errno", "-fno-trapping-math", "-fassociative-math", "-fno-signed-zeros"]
# Flags that narrow -march=native to a forced ISA (GCC and clang drop every extension that depends on the
# one turned off: -mno-avx512f drops all of AVX-512, -mno-avx2 AVX-512 and AVX2), and the CPU flags it needs.
ISA_FLAGS = {"native": [], "avx2": ["-mno-avx512f"], "generic": ["-mno-avx2"]}
ISA_NEEDS = {"avx2": ("avx2", "fma")}

_NO_ADAPTERS = torch.empty(0, dtype=torch.long)
_lock = threading.Lock()
_built: dict[str | tuple[str, str], object] = {}  # isa -> module; ("error", isa) -> why it cannot be built


def _flags(isa: str) -> list[str]:
    """Compiler flags for `isa` on this CPU; InvalidRequestError if this CPU cannot run that ISA's kernels."""
    if isa not in ISA_FLAGS:
        raise InvalidRequestError(f"unknown isa {isa!r}: use one of {', '.join(ISA_FLAGS)}", param="isa")
    if isa != "native" and platform.machine().lower() not in ("x86_64", "amd64"):
        raise InvalidRequestError(f"isa {isa!r} is for x86-64 CPUs; this is {platform.machine()}: use native",
                                  param="isa")
    missing = [f for f in ISA_NEEDS.get(isa, ()) if f not in cpu_flags()]
    if missing:
        raise InvalidRequestError(f"isa {isa!r} needs CPU features this CPU lacks: {', '.join(missing)}",
                                  param="isa")
    return FLAGS + ISA_FLAGS[isa]


def resolved_isa(isa: str) -> str:
    """`isa`, or native where the forced ISA is what this CPU has anyway (one build, not two alike)."""
    cpu = cpu_flags()
    if (isa == "avx2" and {"avx2", "fma"} <= cpu and "avx512f" not in cpu) or (isa == "generic" and "avx2" not in cpu):
        return "native"
    return isa


def _build_key(flags: list[str]) -> str:
    parts = [platform.machine(), " ".join(sorted(cpu_flags())) or platform.processor(), torch.__version__, " ".join(flags),
             *(hashlib.sha256(f.read_bytes()).hexdigest() for f in SOURCES)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def extension(isa: str | None = None):
    """The compiled module for `isa` (default: the `isa` setting), built once per CPU, ISA, torch version and
    source; raises RuntimeError if it cannot be built, InvalidRequestError if this CPU cannot run that ISA."""
    isa = resolved_isa(isa or get_settings().isa)
    flags = _flags(isa)  # checked every time: a cached build is no answer for a CPU that cannot run it
    with _lock:
        if isa in _built:
            return _built[isa]
        if ("error", isa) in _built:
            raise RuntimeError(_built["error", isa])
        from torch.utils.cpp_extension import load

        try:
            folder = Path(platformdirs.user_cache_dir("tailorlm")) / "kernels" / f"decode_step-{_build_key(flags)}"
            folder.mkdir(parents=True, exist_ok=True)
            # one module name per ISA: a process may hold two builds (the kernel tests compare them)
            module = load(name=f"tailorlm_decode_step_{isa}", sources=[str(SOURCE)], extra_cflags=flags,
                          extra_ldflags=["-fopenmp"], build_directory=str(folder), verbose=False)
        except (RuntimeError, OSError, ImportError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            _built["error", isa] = f"cannot build the native decode step (it needs a C++ compiler and ninja): {first}"
            raise RuntimeError(_built["error", isa]) from None
        _built[isa] = module
        return module


def _none() -> torch.Tensor:
    return torch.empty(0)


def _linear(module: nn.Module) -> list[torch.Tensor] | None:
    """(weight [out, in], scale or empty, bias or empty) of a layer the C++ step can read in place (q4: weight
    uint8 [out, in / 2], scale float32 [out, in / 32])."""
    bias = getattr(module, "bias", None)
    bias = _none() if bias is None else bias.detach()
    if type(module) in (Int8Linear, Q4Linear):
        return [module.qweight, module.scale, bias]
    if type(module) is nn.Linear and module.weight is not None and module.weight.is_contiguous() \
            and module.weight.dtype in (torch.float32, torch.bfloat16):
        return [module.weight.detach(), _none(), bias]
    return None


def readable_dtype(model: nn.Module, *, int8: bool) -> bool:
    """True when the C++ step can read this model's weights once the layout is applied (int8, or float32 and
    bfloat16 left plain)."""
    return int8 or next(model.parameters()).dtype in (torch.float32, torch.bfloat16)


def _projections(model: nn.Module) -> list[nn.Module]:
    """The step's linear layers in its order: q, k, v, o, gate, up, down of each layer."""
    return [getattr(getattr(layer, block), n) for layer in model.model.layers for block, names in PROJECTIONS
            for n in names]


def unreadable(model: nn.Module) -> str | None:
    """Why the C++ step cannot read this model's weights in place (None: it can)."""
    weights = []
    for m in [*_projections(model), model.lm_head]:
        read = _linear(m)
        if read is None:
            return f"a {type(m).__name__} layer"
        weights.append(read[0])
    embed = model.model.embed_tokens
    if type(embed) is not Int8Embedding and not (type(embed) is nn.Embedding and
                                                 embed.weight.dtype in (torch.float32, torch.bfloat16)):
        return f"a {type(embed).__name__} embedding"
    # int8 and q4 (uint8) layers both read int16-quantized inputs, so they mix (a q4 model's head is int8)
    if len({torch.int8 if w.dtype is torch.uint8 else w.dtype for w in weights}) != 1:
        return "mixed weight dtypes"
    return None


class NativeDecoder:
    """Same contract as LeanDecoder.forward, without a mask: row b attends over positions 0..positions[b];
    row b adds the LoRA deltas of adapter id adapter_ids[b] (-1: none) on the step's linear layers."""

    def __init__(self, model: nn.Module, shape: LeanDecoder) -> None:
        """`shape`: the model's lean step, whose heads, RoPE and scaling this step takes as they are."""
        why = unreadable(model)
        if why:
            raise ValueError(f"the native decode step cannot read {why}")
        base = model.model
        projections = _projections(model)
        linears = [_linear(m) for m in [*projections, model.lm_head]]
        embed = base.embed_tokens
        if type(embed) is Int8Embedding:
            table, table_scale = embed.head[0].qweight, embed.head[0].scale
        else:
            table, table_scale = embed.weight.detach(), _none()
        norms = [w.detach() for layer in base.layers
                 for w in (layer.input_layernorm.weight, layer.post_attention_layernorm.weight)]
        self.step = extension().DecodeStep(
            shape.heads, shape.kv_heads, shape.head_dim, float(shape.eps), shape.scaling, shape.inv_freq,
            shape.rope_scale, table, table_scale, norms, linears, base.norm.weight.detach())
        names = {id(m): name for name, m in model.named_modules()}
        self.paths = [names[id(m)] for m in projections]  # where a LoRA adapter's layers are found, in step order
        self.unserved: set[int] = set()  # adapter ids that also target a layer outside the step (head, embedding)

    def sync_lora(self, bank: LoraBank) -> None:
        """Give the step the adapters `bank` holds now (after every add or remove)."""
        ids = max(bank.ids.values(), default=-1) + 1
        for index, path in enumerate(self.paths):
            layer = bank.layers.get(path)
            if layer is None or layer.a_cat is None:
                self.step.clear_lora(index)
                continue
            spans = torch.full((ids, 2), -1, dtype=torch.long)
            for aid, (lo, hi) in layer.spans.items():
                spans[aid] = torch.tensor([lo, hi])
            self.step.set_lora(index, layer.a_cat.float().contiguous(), layer.b_cat.float().contiguous(), spans)
        inside = set(self.paths)
        self.unserved = {aid for path, layer in bank.layers.items() if path not in inside for aid in layer.adapters}

    def adapter_ids(self, adapters: Sequence[str | None], bank: LoraBank) -> torch.Tensor | None:
        """Each row's adapter id for the step (empty: no row has one); None if a row's adapter is not served."""
        if not any(adapters):
            return _NO_ADAPTERS
        ids = [bank.ids[a] if a is not None else -1 for a in adapters]
        if self.unserved.intersection(ids):
            return None
        return torch.tensor(ids, dtype=torch.long)

    def __call__(self, token_ids: torch.Tensor, positions: torch.Tensor, keys: list[torch.Tensor],
                 values: list[torch.Tensor], adapter_ids: torch.Tensor | None = None, *,
                 slots: torch.Tensor | None = None, logit_rows: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of `logit_rows` (default: every row); row b is slot `slots[b]` (default: slot b). Rows of one
        slot at successive positions are a causal prefill: every row's key and value is written before any
        row attends."""
        return self.step.forward(token_ids, positions, keys, values,
                                 _NO_ADAPTERS if adapter_ids is None else adapter_ids,
                                 _NO_ADAPTERS if slots is None else slots,
                                 _NO_ADAPTERS if logit_rows is None else logit_rows)
