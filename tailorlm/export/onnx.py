"""Export a Hugging Face causal LM to one ONNX decoder graph with a KV cache, for onnxruntime.

The graph (one for prefill and decode alike; P may be 0):
  inputs   input_ids [B, S] int64, position_ids [B, S] int64, attention_mask [B, P+S] int64 (1 = attend),
           past_key_values.{i}.key / .value [B, kv_heads, P, head_dim] float32, for every layer i
  outputs  logits [B, S, vocab] float32, present.{i}.key / .value [B, kv_heads, P+S, head_dim] float32
Past key j sits at position j (its row's padding, if any, comes after its real keys and is hidden by
attention_mask); new key P+s sits at position_ids[:, s]. The causal (and sliding-window) mask is built
in the graph from those positions, so rows of different lengths batch with right padding.

Exporter: `torch.onnx.export(dynamo=True)` works on transformers 5 llama, qwen2, mistral and gpt2 once the
cache is rebuilt from flat tensors inside a wrapper module (no pytree registration of DynamicCache is needed)
and the 4D mask is passed ready-made (transformers returns a 4D mask as is, so no data-dependent mask code is
traced). The TorchScript exporter (`dynamo=False`) also traces these models and is kept only as a fallback for
architectures torch.export rejects; it is deprecated in torch 2.9+. optimum is not used: its
ONNX exporter (optimum-onnx 0.1.0, the newest on PyPI) requires transformers < 4.58.
Weights always go to external data (`model.onnx` + `model.onnx.data`), so > 2 GB models need no special case.

int8 is onnxruntime's MatMulNBits with 8-bit weights in blocks of 32 (with zero points) and int8 compute
(accuracy_level 4), not `quantize_dynamic`: on SmolLM2-135M under tailorlm.export.parity's golden prompts
(208 positions) MatMulNBits scores top-1 0.93, KL 0.005; dynamic int8 (one activation scale per tensor) scores
0.60 / 0.71 (per-channel 0.63 / 0.64), failing the int8 gate (0.80 / 0.30), at about the same speed.
fp32 compute (accuracy_level 1) is no more accurate there and ~10x slower.
The export's optimize=False skips onnxscript's optimizer (+40 s on SmolLM2, no faster once ORT optimizes at load);
only constant folding runs, so each Linear's transposed weight is a constant that the quantizer can take.
"""

from __future__ import annotations

import logging
import os
import shutil
import types
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from tailorlm.engine.shape import ModelShape
from tailorlm.errors import AlreadyExistsError, InvalidRequestError, UnsupportedModelError
from tailorlm.hf_load import pretrained

MODEL_FILE = "model.onnx"
DATA_FILE = MODEL_FILE + ".data"
COPIED_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
                "config.json", "generation_config.json")
QUANTS = {None: None, "f32": None, "fp32": None, "int8": "int8"}
_SAMPLE = dict(batch=2, seq=3, past=4)  # > 1 each, so torch.export does not specialise a dim to 0 or 1
OPSET = 18


def io_names(layers: int) -> tuple[list[str], list[str]]:
    """The graph's input and output names, in order."""
    kv = [(i, k) for i in range(layers) for k in ("key", "value")]
    inputs = ["input_ids", "position_ids", "attention_mask"] + [f"past_key_values.{i}.{k}" for i, k in kv]
    return inputs, ["logits"] + [f"present.{i}.{k}" for i, k in kv]


class _Decoder(torch.nn.Module):
    """The HF model behind flat tensors: past tensors in, logits and present tensors out."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        shape = ModelShape.of(model.config)  # the native runner's window rule, so the graph masks as it does
        self.layers, self.window = shape.layers, shape.window
        self.mixed = shape.per_layer_masks  # per-layer-type masks (e.g. gemma2/3)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor,
                *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        b, p = input_ids.shape[0], past[0].shape[2]
        # full layers even where the model slides a window (a sliding cache layer would drop old keys, and the
        # runner keeps every position): the window lives in the mask below
        cache = DynamicCache(ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(self.layers)])
        past_pos = torch.arange(p, dtype=position_ids.dtype, device=position_ids.device).unsqueeze(0).expand(b, p)
        k_pos = torch.cat([past_pos, position_ids], dim=1)[:, None, None, :]  # [B, 1, 1, P+S]
        q_pos = position_ids[:, None, :, None]  # [B, 1, S, 1]
        allowed = (k_pos <= q_pos) & attention_mask.bool()[:, None, None, :]  # [B, 1, S, P+S]
        mask: torch.Tensor | dict[str, torch.Tensor] = allowed
        if self.window is not None:
            sliding = allowed & (k_pos > q_pos - self.window)
            mask = {"full_attention": allowed, "sliding_attention": sliding} if self.mixed else sliding
        out = self.model(input_ids=input_ids, position_ids=position_ids, attention_mask=mask, cache=cache,
                         use_cache=True)
        present = [t for layer in cache.layers for t in (layer.keys, layer.values)]
        return (out.logits, *present)


def _conv1d_as_matmul(model: torch.nn.Module) -> None:
    """GPT-2's Conv1D is addmm, which exports as Gemm; as matmul + add it exports as MatMul, which int8 quantizes."""
    from transformers.pytorch_utils import Conv1D

    for module in model.modules():
        if isinstance(module, Conv1D):
            module.forward = types.MethodType(lambda self, x: torch.matmul(x, self.weight) + self.bias, module)


def _sample_inputs(shape: ModelShape) -> tuple[torch.Tensor, ...]:
    b, s, p = _SAMPLE["batch"], _SAMPLE["seq"], _SAMPLE["past"]
    ids = torch.randint(0, shape.vocab, (b, s))
    pos = torch.arange(p, p + s).expand(b, s).contiguous()
    past = [torch.zeros(b, shape.kv_heads, p, shape.head_dim) for _ in range(2 * shape.layers)]
    return (ids, pos, torch.ones(b, p + s, dtype=torch.long), *past)


def _export_dynamo(wrapper: _Decoder, args: tuple[torch.Tensor, ...], path: Path) -> None:
    import onnx_ir
    import onnxscript.optimizer

    names_in, names_out = io_names(wrapper.layers)
    batch, seq = torch.export.Dim("batch", min=1), torch.export.Dim("sequence", min=1)
    past = torch.export.Dim("past_sequence", min=0)
    shapes = ({0: batch, 1: seq}, {0: batch, 1: seq}, {0: batch, 1: torch.export.Dim.DYNAMIC},
              tuple({0: batch, 2: past} for _ in range(2 * wrapper.layers)))
    program = torch.onnx.export(wrapper, args, input_names=names_in, output_names=names_out, dynamic_shapes=shapes,
                                dynamo=True, external_data=True, opset_version=OPSET, verbose=False,
                                optimize=False)  # the full onnxscript pass: +40 s on SmolLM2, no faster under ORT
    # ...but weights must be constants for int8: fold the Transpose each Linear puts on its weight (< 1 s)
    onnxscript.optimizer.fold_constants(program.model, input_size_limit=2**62, output_size_limit=2**62)
    onnxscript.optimizer.remove_unused_nodes(program.model)
    mask = program.model.graph.inputs[2]  # name its length like the outputs' (else an anonymous s<N>)
    mask.shape = onnx_ir.Shape([mask.shape[0], "past_sequence + sequence"])
    program.save(str(path), external_data=True)


def _export_torchscript(wrapper: _Decoder, args: tuple[torch.Tensor, ...], path: Path) -> None:
    import onnx

    names_in, names_out = io_names(wrapper.layers)
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "position_ids": {0: "batch", 1: "sequence"},
            "attention_mask": {0: "batch", 1: "past_sequence + sequence"}, "logits": {0: "batch", 1: "sequence"}}
    axes.update({n: {0: "batch", 2: "past_sequence"} for n in names_in[3:]})
    axes.update({n: {0: "batch", 2: "past_sequence + sequence"} for n in names_out[1:]})
    torch.onnx.export(wrapper, args, str(path), input_names=names_in, output_names=names_out, dynamic_axes=axes,
                      dynamo=False, opset_version=OPSET)
    model = onnx.load(str(path))  # TorchScript writes weights inline up to 2 GB: move them out, like dynamo
    for stale in path.parent.iterdir():
        if stale.name != path.name:
            stale.unlink()
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=DATA_FILE)


def _reason(exc: BaseException) -> str:
    """The exporter's one-line reason: its exception summary if it printed one, else the first line."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for i, line in enumerate(lines):
        if line.startswith("## Exception summary") and i + 1 < len(lines):
            return lines[i + 1]
    return lines[0] if lines else type(exc).__name__


def _export_graph(src: Path, path: Path, progress: Callable[[str], None]) -> None:
    from transformers import AutoModelForCausalLM

    progress(f"loading {src.name} in float32")
    try:
        model = pretrained(AutoModelForCausalLM, src, dtype=torch.float32, attn_implementation="sdpa",
                                                     use_safetensors=True).eval()
    except (OSError, ValueError) as exc:
        raise UnsupportedModelError(f"transformers cannot load {src} as a causal LM: {_reason(exc)}") from exc
    _conv1d_as_matmul(model)
    wrapper = _Decoder(model).eval()
    args = _sample_inputs(ModelShape.of(model.config))
    progress("exporting the decoder graph (torch.onnx, dynamo)")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            _export_dynamo(wrapper, args, path)
            return
        except Exception as exc:  # noqa: BLE001 - any exporter fault falls back, then reports its reason
            first = exc
        for stale in path.parent.iterdir():
            stale.unlink()
        progress(f"dynamo export failed ({_reason(first)}); trying the TorchScript exporter")
        try:
            _export_torchscript(wrapper, args, path)
        except Exception as exc:  # noqa: BLE001
            raise UnsupportedModelError(f"cannot export {model.config.model_type} to ONNX: {_reason(first)} "
                                        f"(TorchScript exporter: {_reason(exc)})") from exc


def _quantize_int8(fp32: Path, out: Path) -> None:
    """8-bit MatMulNBits weights (blocks of 32 along K, with zero points), int8 compute (accuracy_level 4)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    chatty = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")  # logs every node at INFO
    level = chatty.level
    chatty.setLevel(logging.WARNING)
    try:
        quantizer = MatMulNBitsQuantizer(onnx.load(str(fp32)), bits=8, block_size=32, is_symmetric=False,
                                         accuracy_level=4)
        quantizer.process()
        quantizer.model.save_model_to_file(str(out), use_external_data_format=True)
    finally:
        chatty.setLevel(level)


def write_onnx(src: Path, out_dir: Path, quant: str | None = None, *,
               progress: Callable[[str], None] | None = None) -> None:
    """Export the HF folder `src` to `out_dir` (model.onnx, model.onnx.data, config and tokenizer files).

    `quant`: None or "f32" keeps float32 weights; "int8" stores MatMul weights in 8 bits. The folder
    is built as `<out_dir>.partial` and renamed into place, so a failure leaves no `out_dir` behind.
    """
    if quant not in QUANTS:
        raise InvalidRequestError(f"unknown ONNX quantization {quant!r}; use one of: f32, int8", param="quant")
    src, out_dir = Path(src), Path(out_dir)
    if not (src / "config.json").is_file():
        raise UnsupportedModelError(f"{src} is not a Hugging Face model folder (no config.json)")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise AlreadyExistsError(f"{out_dir} already exists and is not empty; remove it or pick another folder")
    say = progress or (lambda _msg: None)
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # a stale one from an interrupted export
    try:
        graph_dir = partial / "fp32" if QUANTS[quant] else partial
        graph_dir.mkdir(parents=True)
        _export_graph(src, graph_dir / MODEL_FILE, say)
        if QUANTS[quant] == "int8":
            say("quantizing MatMul weights to int8 (onnxruntime MatMulNBits, 8 bits)")
            _quantize_int8(graph_dir / MODEL_FILE, partial / MODEL_FILE)
            shutil.rmtree(graph_dir)
        if (partial / DATA_FILE).exists():
            os.chmod(partial / DATA_FILE, 0o644)  # onnx writes external data owner-only
        say("copying config and tokenizer files")
        for name in COPIED_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, partial / name)
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        partial.rename(out_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    say(f"wrote {out_dir / MODEL_FILE}")
