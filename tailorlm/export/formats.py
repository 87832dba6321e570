"""Which artifact formats and quantizations `tailor export` writes, and the file each is stored as."""

from __future__ import annotations

from dataclasses import dataclass

from tailorlm.errors import InvalidRequestError


@dataclass(frozen=True)
class Target:
    format: str  # safetensors | gguf | onnx
    quant: str

    @property
    def suffix(self) -> str:
        """What the default artifact name ends with, e.g. `-gguf-q8_0`."""
        return f"-{self.format}-{self.quant}".replace("-safetensors-", "-")


# format -> (quantizations it takes, the default one)
QUANTS: dict[str, tuple[tuple[str, ...], str]] = {
    "safetensors": (("f32", "f16", "bf16"), "f32"),
    "gguf": (("f32", "f16", "bf16", "q8_0", "q4_0"), "f16"),
    "onnx": (("f32", "int8"), "f32"),
}
ARTIFACT_FILE = {"gguf": "model.gguf", "onnx": "model.onnx"}  # safetensors: the HF folder's own files


def target(fmt: str, quant: str | None) -> Target:
    """The export target, or InvalidRequestError naming what the format takes."""
    fmt = fmt.lower()
    if fmt not in QUANTS:
        raise InvalidRequestError(f"unknown export format {fmt!r}: use {', '.join(QUANTS)}", param="format")
    allowed, default = QUANTS[fmt]
    quant = (quant or default).lower()
    if quant not in allowed:
        raise InvalidRequestError(f"{fmt} takes --quant {'|'.join(allowed)}, not {quant!r}", param="quant")
    return Target(fmt, quant)
