"""Plan a model (or a LoRA adapter over its base) as the store holds it: shape, artifact and adapter sizes."""

from __future__ import annotations

from pathlib import Path

from tailorlm.config import get_settings
from tailorlm.errors import InvalidRequestError
from tailorlm.plan.estimate import (
    ENGINE_OF_QUANT, FORMAT_OF_ENGINE, QUANT_OF_DTYPE, QUANTS, Estimate, estimate, read_shape,
)
from tailorlm.plan.targets import Target
from tailorlm.store import Manifest, ModelStore

WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".onnx", ".onnx_data", ".data")
ENGINE_OF_FORMAT = {fmt: engine for engine, fmt in FORMAT_OF_ENGINE.items()}


def stored_quant(manifest: Manifest) -> str:
    """The quantization of the stored artifact: its recorded one, else its dtype's name (f32, bf16...)."""
    quant = manifest.quantization or QUANT_OF_DTYPE.get(manifest.dtype or "")
    if quant not in QUANTS:
        raise InvalidRequestError(f"cannot tell how {manifest.name}'s weights are stored "
                                  f"(dtype {manifest.dtype}, quantization {manifest.quantization}); pass --quant",
                                  param="quant")
    return quant


def stored_weight_bytes(manifest: Manifest) -> int:
    """Bytes of the stored weight files (not the tokenizer, config or README)."""
    return sum(d.size for rel, d in manifest.files.items() if rel.endswith(WEIGHT_SUFFIXES))


def plan_stored(name: str, *, home: Path, target: Target, context: int | None = None, parallel: int = 1,
                quant: str | None = None, dtype: str = "auto", budget_bytes: int | None = None,
                prefix_cache_bytes: int = 0, kernels: str = "native") -> Estimate:
    """Estimate serving stored model or adapter `name`; ModelNotFoundError when the store has neither.

    `quant` plans an export of the model at that quantization; `dtype` (a Settings.dtype) is the native
    engine's compute dtype, which re-materialises the weights when it differs from the stored one.
    """
    from tailorlm.runtime.resolve import resolve

    models = ModelStore(home)
    found = resolve(name, get_settings().model_copy(update={"home": Path(home)}))
    adapter = found.adapter
    manifest = found.manifest or models.get(found.model)  # an embedded default is planned once it is pulled
    shape = read_shape(models.path(manifest.name), manifest.parameters)
    own = stored_quant(manifest)
    if quant is None and dtype == "q4":  # planned as int8: the same load peak; q4 reads fewer bytes per step
        dtype = "int8"
    native_int8 = quant is None and dtype == "int8"  # the native engine's weight-only int8, not an ONNX export
    if quant is None and dtype != "auto":
        if dtype not in QUANT_OF_DTYPE:
            raise InvalidRequestError(f"unknown dtype {dtype!r}; choose auto, float32, bfloat16, float16, int8 or q4",
                                      param="dtype")
        quant = QUANT_OF_DTYPE[dtype]
    quant = quant or own
    if quant not in QUANTS:
        raise InvalidRequestError(f"unknown quantization {quant!r}; choose one of: {', '.join(QUANTS)}", param="quant")
    as_stored = quant == own
    engine = ENGINE_OF_FORMAT.get(manifest.format, "native") if as_stored else ENGINE_OF_QUANT[quant]
    if native_int8:
        engine = "native"
    return estimate(
        shape, name=found.name, quant=quant,
        context=context or shape.max_context, parallel=parallel, target=target,
        weights=stored_weight_bytes(manifest) if as_stored else None, engine=engine,
        adapters=adapter.size if adapter is not None else 0, budget_bytes=budget_bytes,
        prefix_cache_bytes=prefix_cache_bytes, kernels=kernels,
    )
