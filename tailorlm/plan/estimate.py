"""Estimate what serving a model takes: memory by part, expected decode speed, and whether it fits a target.

Every part models what our engines actually allocate, calibrated against the peak RSS of the default model
on the project machine (tests/test_plan.py measures it again):

- weights: the artifact's bytes. The native engine keeps the safetensors file memory-mapped, and every page
  of it is read once when the linear layers are re-laid out, so all of it stays resident.
- layout copy: the native CPU engine's C++ decode step (Llama, Mistral, Qwen2; tailorlm/engine/native_step.py)
  reads f32/bf16 weights in place: no copy. Elsewhere (other architectures, kernels "torch") it re-lays every
  linear weight (oneDNN-packed for f32/bf16, transposed otherwise; a tied output head gets its own copy), a
  second copy of all matrices in the compute dtype. With dtype int8 the model loads in its activation dtype (bf16
  on a target that multiplies it natively, else f32) and is quantized layer by layer: memory peaks as that load
  does, and a decode step reads the int8 copy (one byte per weight).
- KV cache: 2 x layers x kv_heads x head_dim x bytes x context x parallel, the context rounded up to the
  256-position blocks the slot cache grows by (tailorlm/engine/kv_cache.py).
- KV growth: the slot cache grows on demand into a new tensor and copies the old one in, so at its last
  growth both generations are alive: the final cache plus the one before it. That is the last 256-position
  block step with every slot in use (or, at most one block of context, the last doubling of the slots).
  Slots double only when more requests run at once; plan `--parallel` as serve's `--max-batch` (the worst case).
  llama.cpp preallocates its cache (no growth part); onnxruntime concatenates past keys/values (old + new).
- adapters: their stored sizes. Runtime: Python + torch + transformers + tokenizer, measured.
- prefix cache (native engine): its capacity (`prefix_cache_mb`), which a server with many long prompts fills.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tailorlm.errors import InvalidRequestError, UnsupportedModelError
from tailorlm.plan.targets import Target

MIB = 1024**2
QUANTS = ("f32", "f16", "bf16", "q8_0", "q4_0", "int8")
QUANT_OF_DTYPE = {"float32": "f32", "float16": "f16", "bfloat16": "bf16", "int8": "int8"}
ENGINE_OF_QUANT = {"f32": "native", "f16": "native", "bf16": "native",
                   "q8_0": "llama.cpp", "q4_0": "llama.cpp", "int8": "onnxruntime"}
FORMAT_OF_ENGINE = {"native": "safetensors", "llama.cpp": "gguf", "onnxruntime": "onnx"}
# bytes per weight: q8_0 is 32 int8 + one f16 scale per block of 32; q4_0 is 32 nibbles + an f16 scale;
# q6_K (what llama-quantize gives the output head of a q4_0 model) is 210 bytes per 256 (ggml-common.h).
BYTES_PER_WEIGHT = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32, "q6_K": 210 / 256}
KV_BYTES = {"native": None, "llama.cpp": 2, "onnxruntime": 4}  # None: the compute dtype; llama.cpp's cache is f16
KV_BLOCK = 256  # SlotKVCache.GROW_BLOCK; llama.cpp also pads its context to 256
# Calibrated: peak RSS of a fresh process importing tailorlm.runtime and loading the default model's tokenizer
# is 454 MiB; the engine thread, oneDNN scratch and activations of a short request add ~26 MiB more.
RUNTIME_BYTES = 480 * MIB
CUDA_CONTEXT_BYTES = 500 * MIB  # CUDA context + cuBLAS workspace on the GPU; not measured here (no GPU)
# Fraction of the streaming-read bandwidth a decode step reaches: weight bytes read per token x tok/s over the
# 2-thread streaming read, measured by benchmarks/bench_decode.py on the default model (docs/benchmarks.md), the
# lower of two runs (41.7 and 44.3 GB/s probes): the native C++ step f32 87%, bf16 83%, int8 54%; llama.cpp
# q8_0 51%, f16 72%. (The probe is a single-stream torch sum: the C++ f32 step has read faster than it, 119%.)
# The torch step (other architectures, kernels "torch") f32 61%, bf16 37%, int8 25%: a model this small is
# dispatch-bound there, so larger models reach more. q4_0 and onnxruntime int8 come from the export benchmark
# (41% and 51%); f16 on the native engine runs as bf16 does on the torch step.
DECODE_FRACTION = {("native", "f32"): 0.87, ("native", "bf16"): 0.83, ("native", "int8"): 0.54,
                   ("llama.cpp", "f16"): 0.72, ("llama.cpp", "q8_0"): 0.51,
                   ("llama.cpp", "q4_0"): 0.41, ("onnxruntime", "int8"): 0.51}
TORCH_STEP_FRACTION = {"f32": 0.61, "bf16": 0.37, "f16": 0.37, "int8": 0.25}
GPU_DECODE_FRACTION = 0.7  # a GPU decode step reads weights at ~70% of peak in llama.cpp/vLLM reports
TIGHT = 0.10  # under 10% headroom is reported as tight


@dataclass(frozen=True)
class ModelShape:
    """What memory depends on: the engine's shape of the model's config.json (tailorlm/engine/shape.py), with
    its parameter count."""

    parameters: int
    layers: int
    kv_heads: int
    head_dim: int
    hidden: int
    vocab: int
    tied: bool
    max_context: int
    in_place: bool = False  # an architecture the native C++ decode step runs (it reads f32/bf16 weights in place)

    @property
    def vector_params(self) -> int:
        """Norm weights (one hidden vector per norm, two per layer and a final one): kept f32 when quantized."""
        return self.hidden * (2 * self.layers + 1)

    @property
    def embed_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def linear_params(self) -> int:
        """Weights of every nn.Linear, the output head included (a tied head counts once more here)."""
        untied_embed = 0 if self.tied else self.embed_params
        return self.parameters - self.vector_params - untied_embed

    def kv_bytes_per_token(self, value_bytes: int) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * value_bytes


def read_shape(folder: Path, parameters: int) -> ModelShape:
    """The shape of the stored model in `folder` (its config.json), with the runner's own defaults."""
    from transformers import AutoConfig

    from tailorlm.engine import shape as engine_shape
    from tailorlm.engine.decoder import ARCHITECTURES

    try:
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise UnsupportedModelError(f"cannot read the model config in {folder}: {exc}") from None
    s = engine_shape.ModelShape.of(config)
    return ModelShape(
        parameters=parameters, layers=s.layers, kv_heads=s.kv_heads, head_dim=s.head_dim, hidden=s.hidden,
        vocab=s.vocab, tied=s.tied, max_context=s.max_context,
        in_place=engine_shape.text_config(config).model_type in ARCHITECTURES,
    )


def weight_bytes(shape: ModelShape, quant: str) -> int:
    """The artifact's weight bytes for `quant`, with embeddings and norms kept as llama.cpp/onnxruntime keep them."""
    if quant in ("f32", "f16", "bf16"):
        return shape.parameters * int(BYTES_PER_WEIGHT[quant])
    matrices = shape.parameters - shape.vector_params
    norms = shape.vector_params * 4
    if quant == "q8_0":
        return math.ceil(matrices * BYTES_PER_WEIGHT["q8_0"]) + norms
    if quant == "q4_0":  # the output head (or the tied embedding that serves as one) is kept at q6_K
        rest = matrices - shape.embed_params
        return math.ceil(rest * BYTES_PER_WEIGHT["q4_0"] + shape.embed_params * BYTES_PER_WEIGHT["q6_K"]) + norms
    if quant == "int8":  # dynamic quantization: MatMul weights int8 + one f32 scale per row; the Gather embedding f32
        per_weight = 1 + 4 / shape.hidden
        head = shape.embed_params if shape.tied else 0  # a tied head becomes its own quantized MatMul
        rest = matrices - shape.embed_params
        return math.ceil((rest + head) * per_weight) + shape.embed_params * 4 + norms
    raise InvalidRequestError(f"unknown quantization {quant!r}; choose one of: {', '.join(QUANTS)}", param="quant")


def kv_growth(engine: str, per_token: int, kv_len: int, slots: int) -> int:
    """Bytes of the cache generation still alive while the cache makes its last growth (see module doc)."""
    if engine == "llama.cpp":
        return 0
    if engine == "onnxruntime":
        return per_token * kv_len * slots
    fewer_slots = 1 << ((slots - 1).bit_length() - 1) if slots > 1 else 0  # the doubling before `slots`
    return per_token * max(slots * (kv_len - KV_BLOCK), fewer_slots * kv_len)


@dataclass
class Estimate:
    """Memory by part (bytes), the verdict against a target, and expected decode speed."""

    model: str
    engine: str
    quant: str
    context: int
    parallel: int
    target: str
    target_source: str
    parts: dict[str, int]
    available: int
    limit_reason: str
    bandwidth_gbs: float
    decode_fraction: float
    decode_tok_s: float
    aggregate_tok_s: float
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    @property
    def headroom(self) -> int:
        return self.available - self.total

    @property
    def fits(self) -> bool:
        return self.total <= self.available

    @property
    def verdict(self) -> str:
        if not self.fits:
            return "does not fit"
        return "fits (tight)" if self.headroom < TIGHT * self.available else "fits"

    def to_json(self) -> dict:
        data = asdict(self)
        data.update(total=self.total, headroom=self.headroom, fits=self.fits, verdict=self.verdict)
        return data


def estimate(shape: ModelShape, *, name: str, quant: str, context: int, parallel: int, target: Target,
             weights: int | None = None, engine: str | None = None, adapters: int = 0,
             budget_bytes: int | None = None, prefix_cache_bytes: int = 0, kernels: str = "native") -> Estimate:
    """The memory and speed of serving `parallel` requests of `context` tokens each on `target`.

    `weights` and `engine` describe the stored artifact when planning the model as stored; by default both
    follow from `quant` (f32/f16/bf16 safetensors run natively, q8_0/q4_0 GGUF on llama.cpp, int8 ONNX).
    """
    if quant not in ENGINE_OF_QUANT:
        raise InvalidRequestError(f"unknown quantization {quant!r}; choose one of: {', '.join(QUANTS)}", param="quant")
    if context < 1 or parallel < 1:
        raise InvalidRequestError("--context and --parallel must be at least 1", param="context")
    if context > shape.max_context:
        raise InvalidRequestError(f"context {context} is beyond {name}'s context length {shape.max_context}",
                                  param="context")
    engine = engine or ENGINE_OF_QUANT[quant]
    if engine == "native" and quant not in ("f32", "f16", "bf16", "int8"):
        raise InvalidRequestError(f"the native engine runs f32, f16, bf16 or int8 weights, not {quant}", param="quant")
    if adapters and engine != "native":
        raise InvalidRequestError(f"the {engine} backend serves no LoRA adapters at runtime; plan the adapter "
                                  "merged into its base instead", param="model")
    # int8 loads in its activation dtype (bf16 where the target multiplies it natively, else f32), then every
    # linear layer is quantized
    native_int8 = engine == "native" and quant == "int8"
    loaded = ("bf16" if target.bf16 else "f32") if native_int8 else quant
    value_bytes = KV_BYTES[engine] or int(BYTES_PER_WEIGHT[loaded])
    if weights is None:
        weights = weight_bytes(shape, loaded)
    native_cpu = engine == "native" and not target.gpu
    c_step = native_cpu and shape.in_place and kernels == "native" and quant in ("f32", "bf16", "int8")
    # int8 quantizes after its load: the peak is that load's (measured for bf16: 1,179 MiB both), the reads are int8;
    # the C++ step reads f32/bf16 weights in place
    layout = shape.linear_params * value_bytes if native_cpu and not (c_step and not native_int8) else 0
    kv_len = min(shape.max_context, -(-context // KV_BLOCK) * KV_BLOCK)
    kv = shape.kv_bytes_per_token(value_bytes) * kv_len * parallel
    parts = {
        "runtime": CUDA_CONTEXT_BYTES if target.gpu else RUNTIME_BYTES,
        "weights": weights,
        "layout copy": layout,
        "kv cache": kv,
        "kv growth": kv_growth(engine, shape.kv_bytes_per_token(value_bytes), kv_len, parallel),
        "adapters": adapters,
        "prefix cache": prefix_cache_bytes if engine == "native" else 0,  # its capacity: the worst case
    }
    available, reason = target.available_bytes, "available memory"
    if budget_bytes is not None and budget_bytes < available:
        available, reason = budget_bytes, "memory budget"
    if target.gpu:
        fraction = GPU_DECODE_FRACTION
    elif native_cpu and not c_step:
        fraction = TORCH_STEP_FRACTION.get(quant, 0.35)
    else:
        fraction = DECODE_FRACTION.get((engine, quant), 0.5)
    # A decode step reads every matrix once (in the layout the engine holds it in: int8 is one byte per weight)
    # and, per request, its cached keys/values: on average half the context over a request that fills it.
    if native_int8:
        read_weights = shape.linear_params
    elif native_cpu:
        read_weights = shape.linear_params * value_bytes
    else:
        read_weights = weights
    kv_read = shape.kv_bytes_per_token(value_bytes) * context / 2
    bandwidth = target.bandwidth_gbs * 1e9 * fraction
    notes = [f"decode at {fraction:.0%} of {target.bandwidth_gbs:.1f} GB/s; compute limits are not modelled"]
    if target.gpu:
        notes.append("GPU targets: runtime is the CUDA context (not measured here); host memory is not counted")
    if engine != "native":
        notes.append(f"{engine} figures are modelled from its documented allocation, not calibrated here")
    return Estimate(
        model=name, engine=engine, quant=quant, context=context, parallel=parallel, target=target.name,
        target_source=target.source, parts=parts, available=available, limit_reason=reason,
        bandwidth_gbs=target.bandwidth_gbs, decode_fraction=fraction,
        decode_tok_s=bandwidth / (read_weights + kv_read),
        aggregate_tok_s=parallel * bandwidth / (read_weights + parallel * kv_read), notes=notes,
    )
