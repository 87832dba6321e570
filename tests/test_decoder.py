"""The lean decode step: the transformers forward's logits, int8 weights close to the float ones, compiled."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tailorlm.config import DEFAULT_MODEL
from tailorlm.engine import load_model
from tailorlm.engine.layout import Int8Linear
from tailorlm.engine.runner import ModelRunner
from tailorlm.errors import InvalidRequestError
from tailorlm.store import ModelStore
from tests.tiny import make_tiny_adapter, make_tiny_model

PROMPTS = [[5, 6, 7, 8], [9, 10, 11], list(range(20, 40))]


@pytest.fixture(scope="module", params=["llama", "qwen2", "mistral"])
def model_path(request, tmp_path_factory) -> Path:
    return make_tiny_model(request.param, tmp_path_factory.mktemp(request.param))  # mistral: its window never applies


def runner(path: Path, dtype: str = "float32", kernels: str = "torch", **kw) -> ModelRunner:
    """A runner over a fresh load of `path`; the torch decode step unless `kernels` is native."""
    loaded = load_model(path, dtype=dtype)
    kw = {"max_slots": 4, **kw}
    return ModelRunner(loaded.model, context_length=256, int8=loaded.int8, q4=loaded.q4, kernels=kernels, **kw)


def decode_steps(r: ModelRunner, prompts: list[list[int]], steps: int, feed: list[list[int]] | None = None):
    """Prefill `prompts` into slots 0.., then decode `steps` tokens; returns the logits of every step."""
    for slot, p in enumerate(prompts):
        r.prefill(slot, p, 0)
    tokens, positions, out = [3] * len(prompts), [len(p) for p in prompts], []
    for i in range(steps):
        logits = r.decode(tokens, positions)
        out.append(logits)
        tokens = feed[i] if feed is not None else logits.argmax(-1).tolist()
        positions = [p + 1 for p in positions]
    return out


@pytest.mark.parametrize("prompts", [PROMPTS, [[5, 6, 7], [8, 9, 10]]], ids=["mixed-lengths", "same-length"])
def test_lean_step_gives_the_transformers_forward_logits(model_path, prompts):
    lean, reference = runner(model_path), runner(model_path)
    assert lean.lean is not None
    reference.lean = None  # the transformers modules' own forward over the same cache
    got = decode_steps(lean, prompts, 6)
    feed = [g.argmax(-1).tolist() for g in got]
    for g, want in zip(got, decode_steps(reference, prompts, 6, feed)):
        torch.testing.assert_close(g, want, atol=1e-4, rtol=1e-4)


def test_bf16_step_over_the_whole_cache_capacity_matches(model_path):
    """Past half the cache capacity, reduced precision attends over all of it, masked: same logits."""
    prompts = [[3 + i % 300 for i in range(150)], [7 + i % 290 for i in range(139)]]  # 150 of 256 positions
    lean, reference = runner(model_path, "bfloat16"), runner(model_path, "bfloat16")
    reference.lean = None
    got = decode_steps(lean, prompts, 3)
    assert lean.cache.len_cap == 256
    feed = [g.argmax(-1).tolist() for g in got]
    for g, want in zip(got, decode_steps(reference, prompts, 3, feed)):  # bf16: rounding differs by path
        torch.testing.assert_close(g.float(), want.float(), atol=0.5, rtol=0.05)


def test_unmodelled_architectures_keep_the_transformers_forward(tmp_path):
    assert runner(make_tiny_model("gpt2", tmp_path / "gpt2")).lean is None
    assert runner(make_tiny_model("mistral", tmp_path / "mistral", sliding_window=16)).lean is None  # it applies


def test_int8_linear_stays_within_half_a_step_of_its_weights():
    torch.manual_seed(0)
    w, bias = torch.randn(96, 64), torch.randn(96)
    lin = Int8Linear(w, bias)
    assert lin.qweight.dtype == torch.int8
    step = lin.scale.float()[:, None]
    assert ((lin.dequantized().float() - w).abs() <= 0.5 * step + 0.01 * w.abs()).all()  # + the bf16 scale's rounding
    for rows in (3, Int8Linear.DEQUANT_ROWS + 5):  # the int8 matmul, and dequantize-then-GEMM for many rows
        x = torch.randn(rows, 64)
        want = x @ lin.dequantized().float().t() + bias
        torch.testing.assert_close(lin(x.to(torch.bfloat16)).float(), want, atol=0.25, rtol=0.05)


@pytest.mark.slow
def test_int8_default_model_agrees_with_float32(default_store_home):
    """Teacher-forced: the int8 model's next-token choice equals the float32 model's at >= 95% of steps."""
    path = ModelStore(default_store_home).path(DEFAULT_MODEL)
    prompts = [list(range(1000, 1040)), list(range(2000, 2016))]
    full = decode_steps(runner(path), prompts, 48)
    feed = [f.argmax(-1).tolist() for f in full]
    int8 = runner(path, "int8")
    assert isinstance(int8.model.lm_head, Int8Linear)
    quant = decode_steps(int8, prompts, 48, feed)
    agree = sum(int((a.argmax(-1) == b.argmax(-1)).sum()) for a, b in zip(full, quant)) / (48 * len(prompts))
    assert agree >= 0.95, f"top-1 agreement {agree:.2%}"


def test_compiled_int8_step_equals_the_eager_one(tmp_path):
    path = make_tiny_model("llama", tmp_path / "llama")
    compiled, eager = runner(path, "int8", compile=True), runner(path, "int8")
    assert compiled.compiled is not None
    for prompts in (PROMPTS, [[5, 6, 7], [8, 9, 10]]):  # with and without a row mask
        got = decode_steps(compiled, prompts, 4)
        feed = [g.argmax(-1).tolist() for g in got]
        for g, want in zip(got, decode_steps(eager, prompts, 4, feed)):  # bf16 activations: fused rounding
            torch.testing.assert_close(g, want, atol=0.25, rtol=0.05)


def test_compile_is_refused_where_it_cannot_apply(tmp_path):
    path = make_tiny_model("gpt2", tmp_path / "gpt2")
    with pytest.raises(InvalidRequestError, match="compile"):
        load_model(path, dtype="int8", compile=True)
    with pytest.raises(InvalidRequestError, match="int8"):
        load_model(make_tiny_model("llama", tmp_path / "llama"), dtype="float32", compile=True)


def mixed_adapter_tokens(base: Path, adapter: Path, **load: object) -> list[list[int]]:
    """Greedy tokens of an engine over `base` (loaded with `load`) for requests with adapter `adapter`, without,
    with, and then one alone without it."""
    import json

    from safetensors.torch import load_file

    from tailorlm.engine import Engine, SamplingParams

    tensors = load_file(adapter / "adapter_model.safetensors")
    config = json.loads((adapter / "adapter_config.json").read_text())
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    engine = Engine(load_model(base, **load), max_batch=4)
    try:
        engine.load_adapter("a", tensors, config)
        mixed = [engine.submit([5, 6, 7, 8], params, adapter=a) for a in ("a", None, "a")]
        return [h.tokens() for h in mixed] + [engine.submit([5, 6, 7, 8], params).tokens()]
    finally:
        engine.shutdown()


def test_int8_model_serves_lora_adapters(tmp_path):
    """An adapter over int8 layers: its rows follow the adapter (as in bf16), base rows stay the base's."""
    base = make_tiny_model("llama", tmp_path / "base")
    folder = make_tiny_adapter(base, tmp_path / "a", seed=1, r=4, target_modules=["q_proj", "v_proj", "down_proj"])
    outputs = {dtype: mixed_adapter_tokens(base, folder, dtype=dtype) for dtype in ("bfloat16", "int8")}
    assert outputs["int8"][0] == outputs["int8"][2] != outputs["int8"][1]  # the adapter changes its rows only
    assert outputs["int8"][0][:4] == outputs["bfloat16"][0][:4]  # and int8 follows bf16
