"""Inference weight layout: keep every Linear weight transposed ([in, out], contiguous).

For the single-row matmuls of decoding, `x @ W_t` with a contiguous [in, out] weight streams memory
better on CPU than `linear(x, W)` with W as [out, in]: measured on the default model with 2 threads,
a decode step drops from 36.8 ms to 30.3 ms (docs/decisions.md). The swap happens in place (no extra
memory); a tied output head shares its transposed matrix with the input embedding.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)


class TransposedLinear(nn.Module):
    """y = x @ weight_t (+ bias), with weight_t: [in_features, out_features]."""

    def __init__(self, weight_t: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight_t = nn.Parameter(weight_t, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self.in_features, self.out_features = weight_t.shape

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "TransposedLinear":
        return cls(linear.weight.detach().t().contiguous(), linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Fold leading dims so this is one mm (a 3D `@` would broadcast into a slow bmm).
        y = x.reshape(-1, self.in_features) @ self.weight_t
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features)


class OneDNNLinear(nn.Module):
    """A linear layer whose weight oneDNN has reordered once into its own blocked layout.

    On x86 CPUs oneDNN's fp32 GEMM is 1.5-3x faster than the default BLAS path for the skinny
    matmuls of decoding (measured in docs/decisions.md); float32 and bfloat16 only.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, batch_hint: int = 8) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), batch_hint)
        self.bias = None if bias is None else bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


class Int8Linear(nn.Module):
    """Weight-only int8: per-output-channel symmetric int8 weights; activations in `dtype` (bfloat16 where the
    CPU multiplies it natively, float32 elsewhere: engine/cpu.py).

    A decode step reads half the bytes of bfloat16 weights; the matmul is torch's own
    `_weight_int8pack_mm` for the few rows of decoding. For many rows (a prefill chunk) dequantizing the
    weight once and running one GEMM in the activation dtype is faster, so that is what happens above
    `DEQUANT_ROWS`.
    """

    DEQUANT_ROWS = 32
    QUANT_ROWS = 2048

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        out_features, in_features = weight.shape
        self.qweight = torch.empty(out_features, in_features, dtype=torch.int8)
        scale = torch.empty(out_features)
        for lo in range(0, out_features, self.QUANT_ROWS):  # by blocks: no full-size float temporaries
            w = weight.detach()[lo : lo + self.QUANT_ROWS].float()
            scale[lo : lo + w.shape[0]] = s = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
            self.qweight[lo : lo + w.shape[0]] = torch.round(w / s[:, None]).clamp_(-127, 127).to(torch.int8)
        self.scale = scale.to(dtype)
        self.bias = None if bias is None else bias.detach().to(dtype)
        self.out_features, self.in_features = self.qweight.shape

    def dequantized(self) -> torch.Tensor:
        return self.qweight.to(self.scale.dtype) * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        if x2.dtype != self.scale.dtype:
            x2 = x2.to(self.scale.dtype)
        if x2.shape[0] > self.DEQUANT_ROWS:
            y = torch.nn.functional.linear(x2, self.dequantized(), self.bias)
        else:
            y = torch.ops.aten._weight_int8pack_mm(x2, self.qweight, self.scale)
            if self.bias is not None:
                y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features)


class Q4Linear(nn.Module):
    """Weight-only 4-bit, q4_0-style: blocks of 32 inputs along `in`, each with one float32 scale; byte j of a
    block holds element j (low nibble) and j + 16 (high nibble); value = (nibble - 8) * scale[row, block].

    This is the layout the C++ step's q4 tiles read in place (csrc/tiles_q4.h): a decode step reads a quarter
    of the bytes of bfloat16 (plus 4 bytes of scale per 32 weights). The torch `forward` dequantizes and runs
    one matmul: correct for any rows, but it rebuilds the full weight per call, so it serves prompts on paths
    without the C++ step and the LoRA wrappers, not decoding (the runner keeps int8 where the C++ step is off).
    Scales as llama.cpp's q4_0: the block's largest-magnitude value maps to -8, so all 16 levels are used.
    """

    BLOCK = 32
    QUANT_ROWS = 2048

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        out_features, in_features = weight.shape
        if in_features % self.BLOCK:
            raise ValueError(f"q4 needs in_features divisible by {self.BLOCK}, got {in_features}")
        blocks = in_features // self.BLOCK
        self.qweight = torch.empty(out_features, in_features // 2, dtype=torch.uint8)
        self.scale = torch.empty(out_features, blocks)  # float32: the C++ step reads it as it is
        for lo in range(0, out_features, self.QUANT_ROWS):  # by blocks of rows: no full-size float temporaries
            w = weight.detach()[lo : lo + self.QUANT_ROWS].float().view(-1, blocks, self.BLOCK)
            rows = w.shape[0]
            extreme = w.gather(2, w.abs().argmax(dim=2, keepdim=True))  # signed value of largest magnitude
            s = extreme / -8.0
            inv = torch.where(s == 0, torch.zeros_like(s), 1.0 / s)
            q = (torch.round(w * inv).clamp_(-8, 7) + 8).to(torch.uint8)  # [rows, blocks, 32] in 0..15
            self.qweight[lo : lo + rows] = (q[..., :16] | (q[..., 16:] << 4)).view(rows, -1)
            self.scale[lo : lo + rows] = s.squeeze(2)
        self.dtype = dtype
        self.bias = None if bias is None else bias.detach().to(dtype)
        self.out_features, self.in_features = out_features, in_features

    def dequantized(self) -> torch.Tensor:
        """The [out, in] weight these blocks stand for, in the activation dtype."""
        p = self.qweight.view(self.out_features, -1, self.BLOCK // 2)
        q = torch.cat([p & 0x0F, p >> 4], dim=2).to(torch.int8) - 8  # [out, blocks, 32], element order
        return (q.float() * self.scale[..., None]).view(self.out_features, self.in_features).to(self.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        if x2.dtype != self.dtype:
            x2 = x2.to(self.dtype)
        y = torch.nn.functional.linear(x2, self.dequantized(), self.bias)
        return y.view(*x.shape[:-1], self.out_features)


class Int8Embedding(nn.Module):
    """The input embedding of a tied int8 output head: row i is qweight[i] x scale[i], read from the head's matrix."""

    def __init__(self, head: Int8Linear, padding_idx: int | None) -> None:
        super().__init__()
        self.head = [head]  # a list, so the head's tensors are not registered twice
        self.padding_idx = padding_idx

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        head = self.head[0]
        flat = ids.reshape(-1)
        rows = head.qweight[flat].to(head.scale.dtype) * head.scale[flat, None]
        return rows.view(*ids.shape, head.in_features)


def onednn_available(dtype: torch.dtype) -> bool:
    """True when this torch build can run OneDNNLinear for `dtype` (checked with a tiny matmul)."""
    if dtype not in (torch.float32, torch.bfloat16) or not torch.backends.mkldnn.is_available():
        return False
    try:
        w = torch.randn(4, 8, dtype=dtype)
        x = torch.randn(2, 8, dtype=dtype)
        out = OneDNNLinear(w, None)(x)
        return torch.allclose(out.float(), (x @ w.t()).float(), atol=1e-2)
    except (RuntimeError, AttributeError):
        return False


class TransposedEmbedding(nn.Module):
    """An embedding that reads rows from a shared [dim, vocab] matrix (the tied output head's)."""

    def __init__(self, weight_t: nn.Parameter, padding_idx: int | None) -> None:
        super().__init__()
        self.weight_t = weight_t
        self.padding_idx = padding_idx

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.weight_t[:, ids.reshape(-1)].t().reshape(*ids.shape, -1)


def _replace(root: nn.Module, target: nn.Module, new: nn.Module) -> None:
    for parent in root.modules():
        for name, child in parent.named_children():
            if child is target:
                setattr(parent, name, new)


def to_inference_layout(model: nn.Module, *, int8: bool = False, q4: bool = False, plain: bool = False) -> None:
    """Swap every nn.Linear for a faster inference form, in place (idempotent).

    With `int8`, weight-only int8 (`Int8Linear`, activations in the model's dtype); with `q4` as well, 4-bit
    blocks (`Q4Linear`) for every layer but the output head (int8: it is also the tied input embedding, and the
    logits are the most sensitive to rounding) and layers whose in_features is not a multiple of 32 (int8,
    logged); else, with `plain`, float
    weights stay as they are ([out, in], what the native decode step reads); else oneDNN-packed weights where
    this torch build supports them for the model's dtype; otherwise transposed weights.
    A tied output head shares its matrix with the input embedding where the layout allows.
    """
    if getattr(model, "_tailor_inference_layout", False):
        return
    model._tailor_inference_layout = True
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    tied = head is not None and embed is not None and head.weight is embed.weight
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    if int8 or q4:
        kept = 0
        for lin in linears:
            blocks = q4 and lin is not head and lin.in_features % Q4Linear.BLOCK == 0
            kept += q4 and lin is not head and not blocks
            new = (Q4Linear if blocks else Int8Linear)(lin.weight, lin.bias, dtype=lin.weight.dtype)
            if tied and lin is head and type(embed) is nn.Embedding:
                _replace(model, embed, Int8Embedding(new, embed.padding_idx))
            _replace(model, lin, new)
            lin.weight = None
        if kept:
            log.warning("q4: %d linear layers have in_features not divisible by %d and stay int8", kept,
                        Q4Linear.BLOCK)
        return
    if plain:
        return
    dtype = linears[0].weight.dtype if linears else torch.float32
    if onednn_available(dtype):
        for lin in linears:  # a tied head keeps the embedding's matrix; the packed copy is its own
            _replace(model, lin, OneDNNLinear(lin.weight, lin.bias))
            if not (tied and lin is head):
                lin.weight = None
        return
    for lin in linears:
        if tied and lin is head:
            if type(embed) is not nn.Embedding:
                continue  # e.g. a scaled embedding subclass: leave the pair as it is
            new = TransposedLinear.from_linear(lin)
            _replace(model, embed, TransposedEmbedding(new.weight_t, embed.padding_idx))
        else:
            new = TransposedLinear.from_linear(lin)
        _replace(model, lin, new)
        lin.weight = None  # free the original layout now
