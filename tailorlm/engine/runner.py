"""Runs a transformers causal LM over the shared slot cache: prefill one request, decode many.

The model's own modules do the math; this file only decides positions, masks and which
cache slots each row reads and writes, and returns next-token logits.
"""

from __future__ import annotations

import logging

import torch
from transformers import PreTrainedModel

from tailorlm.engine import attention, decoder, native_step
from tailorlm.engine.backend import RunnerCapabilities
from tailorlm.engine.kv_cache import SlotKVCache
from tailorlm.engine.layout import to_inference_layout
from tailorlm.engine.lora import LoraBank
from tailorlm.engine.shape import ModelShape

log = logging.getLogger(__name__)


class ModelRunner:
    """Owns the model and its KV cache; every method is a pure forward with no scheduling."""

    capabilities = RunnerCapabilities(lora=True, prefix_cache=True, kv_budget=True)

    def __init__(self, model: PreTrainedModel, *, max_slots: int, context_length: int, int8: bool = False,
                 q4: bool = False, compile: bool = False, kernels: str = "native") -> None:
        """`int8`: weight-only int8 linear layers; with `q4` too, 4-bit blocks where the C++ step reads them."""
        self.model = model.eval()
        shape = ModelShape.of(model.config)
        self.window, self.per_layer_masks = shape.window, shape.per_layer_masks
        if self.window is not None and self.window >= context_length:  # never reached: plain causal attention
            self.window, self.per_layer_masks = None, False
        eager = model.config._attn_implementation == "eager"
        # decode through the lean step where it models the architecture exactly (tailorlm/engine/decoder.py),
        # and through the native C++ step (native_step.py) where it can also read the weights in place
        lean = not eager and decoder.unsupported(model, self.window) is None
        native = lean and not compile and kernels == "native" and native_step.readable_dtype(model, int8=int8)
        if native:
            try:
                native_step.extension()
            except RuntimeError as exc:
                log.warning("%s; decoding through torch operators instead", exc)
                native = False
        if q4 and not native:  # Q4Linear's torch forward rebuilds its weight per call: too slow to decode with
            log.warning("q4 weights need the native C++ step; serving weight-only int8 instead")
            q4 = False
        # the native step reads plain [out, in] float weights; the torch step is faster with packed ones
        to_inference_layout(model, int8=int8, q4=q4, plain=native)
        self.lora = LoraBank(model)  # adapters wrap their layers after the layout change, never before
        self.dtype = next(model.parameters()).dtype
        self.cache = SlotKVCache(
            shape.layers, shape.kv_heads, shape.head_dim, dtype=self.dtype,
            max_slots=max_slots, max_len=context_length, v_head_dim=shape.value_dim,
        )
        if model.config._attn_implementation == "sdpa":
            model.set_attn_implementation(attention.NAME)
        self.fast_causal = model.config._attn_implementation == attention.NAME
        self.eager = eager
        self.lean = decoder.LeanDecoder(model) if lean else None
        self.native = native_step.NativeDecoder(model, self.lean) if native else None
        if self.native is not None:
            self.lora.listeners.append(lambda: self.native.sync_lora(self.lora))
        # Prompts through the C++ step where its tiles beat torch's GEMM: int8 weights (torch dequantizes every
        # layer per call) and bfloat16 (torch's bf16 GEMM without bf16 instructions is ~15x slower); float32
        # stays with torch's GEMM, which blocks for many rows better (docs/benchmarks.md, prefill).
        self.native_prefill = self.native is not None and (int8 or self.dtype is torch.bfloat16)
        self.compiled = None
        if self.lean is not None and compile:
            self.compiled = torch.compile(self.lean.forward, dynamic=True, fullgraph=True)

    # -- masks ---------------------------------------------------------------------
    def _plain(self, kv_len: int) -> bool:
        """True when a causal mask over kv_len keys needs no explicit tensor."""
        return self.fast_causal and (self.window is None or kv_len <= self.window)

    def _finish_mask(self, allowed: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor):
        """allowed: [B, 1, S, T] bool causal mask; add sliding-window variants the model expects."""
        def convert(m: torch.Tensor) -> torch.Tensor:
            if not self.eager:
                return m
            return torch.zeros(m.shape, dtype=self.dtype).masked_fill_(~m, torch.finfo(self.dtype).min)

        if self.window is None:
            return convert(allowed)
        sliding = allowed & (k_pos > q_pos - self.window)
        if not self.per_layer_masks:  # every layer slides (e.g. Mistral)
            return convert(sliding)
        return {"full_attention": convert(allowed), "sliding_attention": convert(sliding)}

    # -- forwards --------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, slot: int, token_ids: list[int], start: int, all_logits: bool = False,
                adapter: str | None = None) -> torch.Tensor:
        """Write `token_ids` (positions start..) into `slot`, through `adapter` if set; return logits [S or 1, V]."""
        n = len(token_ids)
        self.cache.reserve(slot + 1, start + n)
        if self.native_prefill:  # the prompt's rows through the decode step's tiles: int8 weights stay int8
            ids = self.native.adapter_ids([adapter] * n, self.lora)
            if ids is not None:
                return self.native(torch.tensor(token_ids, dtype=torch.long), torch.arange(start, start + n),
                                   self.cache.keys, self.cache.values, ids,
                                   slots=torch.full((n,), slot, dtype=torch.long),
                                   logit_rows=None if all_logits else torch.tensor([n - 1]))
        self.cache.prepare_prefill(slot, start, n)
        if start == 0 and self._plain(start + n):
            mask = attention.CAUSAL
        else:
            q_pos = torch.arange(start, start + n).view(1, 1, n, 1)
            k_pos = torch.arange(start + n).view(1, 1, 1, start + n)
            mask = self._finish_mask(k_pos <= q_pos, q_pos, k_pos)
        ids = torch.tensor([token_ids], dtype=torch.long)
        pos = torch.arange(start, start + n).unsqueeze(0)
        self.lora.select([adapter])
        try:
            out = self.model(
                input_ids=ids, position_ids=pos, attention_mask=mask, cache=self.cache,
                use_cache=True, logits_to_keep=0 if all_logits else 1,
            )
        finally:
            self.lora.clear()
        return out.logits[0]

    @torch.inference_mode()
    def decode(self, token_ids: list[int], positions: list[int],
               adapters: list[str | None] | None = None) -> torch.Tensor:
        """One token for each of rows 0..B-1 (slot b = row b, through adapters[b]); return logits [B, V]."""
        b = len(token_ids)
        pos = torch.tensor(positions, dtype=torch.long)
        tokens = torch.tensor(token_ids, dtype=torch.long)
        t = int(pos.max()) + 1
        self.cache.reserve(b, t)
        if self.native is not None:  # unless a row's adapter also adapts a layer outside the step
            ids = self.native.adapter_ids(adapters or [], self.lora)
            if ids is not None:
                return self.native(tokens, pos, self.cache.keys, self.cache.values, ids)
        if int(pos.min()) + 1 == t and self._plain(t):  # every row sees all t keys
            mask = attention.CAUSAL
        else:
            q_pos = pos.view(b, 1, 1, 1)
            k_pos = torch.arange(t).view(1, 1, 1, t)
            mask = self._finish_mask(k_pos <= q_pos, q_pos, k_pos)
        self.lora.select(adapters or [])
        try:
            if self.lean is not None:
                # compiled only while no adapter wraps a layer: a wrapper would change the traced graph
                step = self.compiled if self.compiled is not None and not self.lora.layers else self.lean.forward
                rows_mask = None if mask is attention.CAUSAL else mask
                return step(tokens, pos, t, rows_mask, self.cache.keys, self.cache.values)
            self.cache.prepare_decode(pos)  # the transformers forward writes through the cache's update hook
            out = self.model(
                input_ids=tokens.unsqueeze(1),
                position_ids=pos.unsqueeze(1), attention_mask=mask, cache=self.cache, use_cache=True,
            )
        finally:
            self.lora.clear()
        return out.logits[:, -1]

    def move_slot(self, src: int, dst: int, length: int) -> None:
        self.cache.move(src, dst, length)

    def kv_peak_bytes(self, slots: int, length: int) -> int:
        """The KV cache's most memory while it makes room for `slots` requests of `length` positions."""
        return self.cache.peak_bytes(slots, min(length, self.cache.max_len))

    def reserve(self, slots: int, length: int) -> None:
        """Make room now for `slots` requests of `length` positions (the cache grows at most once for it)."""
        self.cache.reserve(min(slots, self.cache.max_slots), min(length, self.cache.max_len))

    # -- prefix caching (tailorlm/engine/prefix_cache.py) --------------------------------
    def read_kv(self, slot: int, start: int, end: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A copy of positions start..end-1 of `slot`, per layer."""
        return [(k[slot, :, start:end].clone(), v[slot, :, start:end].clone())
                for k, v in zip(self.cache.keys, self.cache.values)]

    def write_kv(self, slot: int, start: int, blocks: list[list[tuple[torch.Tensor, torch.Tensor]]]) -> int:
        """Write cached blocks into `slot` from position `start` on; returns the positions written."""
        n = sum(b[0][0].shape[1] for b in blocks)
        self.cache.reserve(slot + 1, start + n)
        pos = start
        for block in blocks:
            width = block[0][0].shape[1]
            for (k, v), (bk, bv) in zip(zip(self.cache.keys, self.cache.values), block):
                k[slot, :, pos:pos + width] = bk
                v[slot, :, pos:pos + width] = bv
            pos += width
        return n
