"""The architectures tailorlm supports: one table, read by import, the engine, tuning and export.

A model whose `model_type` is not here is refused at import (HF folder, hub, GGUF) with this list, so
nothing later has to guess what a model is: the engine reads whether its lean and native decode steps
model it, tuning which layers LoRA adapts, export which artifact formats it can be written as. Every row is
tested on a tiny random model (tests/test_architectures.py). Pure data: importing it loads no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from tailorlm.errors import UnsupportedModelError

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
GATED_MLP = ("gate_proj", "up_proj", "down_proj")
FORMATS = ("safetensors", "gguf", "onnx")


@dataclass(frozen=True)
class Architecture:
    """What tailorlm knows about one HF `model_type`."""

    family: str  # what README and messages call it
    lora_targets: tuple[str, ...]  # module-name suffixes LoRA adapts (PEFT `target_modules`): nn.Linear layers
    lean_step: bool = False  # engine/decoder.py's lean step (and the native C++ step) model it exactly
    gguf: str | None = None  # llama.cpp architecture it is written as; None: no GGUF export
    onnx: bool = False  # ONNX export (export/onnx.py) traces it and the ONNX runner runs it
    moe: bool = False  # routed experts (3-D parameters, not linear layers): LoRA adapts the attention only

    @property
    def formats(self) -> tuple[str, ...]:
        """The export formats it supports, safetensors (a merged HF folder) always."""
        return tuple(f for f in FORMATS if f == "safetensors" or (f == "gguf" and self.gguf) or
                     (f == "onnx" and self.onnx))


ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture("Llama", ATTENTION + GATED_MLP, lean_step=True, gguf="llama", onnx=True),
    "mistral": Architecture("Mistral", ATTENTION + GATED_MLP, lean_step=True, gguf="llama", onnx=True),
    "qwen2": Architecture("Qwen2", ATTENTION + GATED_MLP, lean_step=True, gguf="qwen2", onnx=True),
    "gpt2": Architecture("GPT-2", ("c_attn", "c_proj", "c_fc"), onnx=True),
    "qwen3": Architecture("Qwen3", ATTENTION + GATED_MLP),
    "qwen3_moe": Architecture("Qwen3 MoE", ATTENTION, moe=True),
    "gemma2": Architecture("Gemma 2", ATTENTION + GATED_MLP),
    "gemma3_text": Architecture("Gemma 3 (text)", ATTENTION + GATED_MLP),
    "phi3": Architecture("Phi-3", ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")),
    "gpt_oss": Architecture("gpt-oss", ATTENTION, moe=True),
    # multi-head latent attention (q_proj where q_lora_rank is None). Not GATED_MLP: PEFT >= 0.18 turns those names
    # into `target_parameters` of the fused experts, which the engine's per-row LoRA cannot serve
    "deepseek_v3": Architecture("DeepSeek-V3", ("q_a_proj", "q_b_proj", "q_proj", "kv_a_proj_with_mqa",
                                                "kv_b_proj", "o_proj"), moe=True),
}


def supported() -> str:
    """The supported model types, for messages."""
    return ", ".join(ARCHITECTURES)


def architecture(model_type: str, what: str = "tailorlm") -> Architecture:
    """The row of `model_type`, or UnsupportedModelError naming every supported one."""
    arch = ARCHITECTURES.get(model_type)
    if arch is None:
        raise UnsupportedModelError(f"{what} does not support {model_type!r} models; supported model types: "
                                    f"{supported()}")
    return arch


def with_format(fmt: str) -> tuple[str, ...]:
    """The model types that export to `fmt`."""
    return tuple(t for t, a in ARCHITECTURES.items() if fmt in a.formats)


def check_export(model_type: str, fmt: str) -> None:
    """UnsupportedModelError unless `model_type` exports to `fmt` (says which formats it does export to)."""
    arch = architecture(model_type, "export")
    if fmt not in arch.formats:
        raise UnsupportedModelError(
            f"{fmt} export does not support model type {model_type!r} (it supports {', '.join(with_format(fmt))}); "
            f"{arch.family} models export as {', '.join(arch.formats)}")
