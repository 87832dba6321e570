"""The native (C++) decode step: the transformers forward's logits in float32; bfloat16 and int8 as close to
their own weights as the torch step; rows with an adapter, and a machine that cannot build it, take the torch step.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from tailorlm.config import get_settings
from tailorlm.engine import load_model, native_step
from tailorlm.engine.layout import Int8Linear
from tailorlm.engine.lora import LoraWeights, linear_features, lora_from_peft
from tailorlm.engine.runner import ModelRunner
from tailorlm.errors import InvalidRequestError
from tests.test_decoder import PROMPTS, decode_steps, runner
from tests.tiny import make_tiny_adapter, make_tiny_model


@pytest.fixture(scope="module", params=["llama", "qwen2", "mistral", "head-dim-64"])
def model_path(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    if request.param == "head-dim-64":  # 4 query heads per key head of 64: the AVX-512 attention kernel's shape
        return make_tiny_model("llama", folder, hidden_size=128, intermediate_size=256, num_attention_heads=8,
                               head_dim=64, initializer_range=0.1)
    return make_tiny_model(request.param, folder)  # mistral: its window never applies


def reference_of(path, dtype="float32") -> ModelRunner:
    ref = runner(path, dtype)
    ref.lean = None  # the transformers modules' own forward
    return ref


@pytest.mark.parametrize("prompts", [PROMPTS, [[5, 6, 7], [8, 9, 10]]], ids=["mixed-lengths", "same-length"])
def test_float32_native_step_gives_the_transformers_forward_logits(model_path, prompts):
    native = runner(model_path, kernels="native")
    assert native.native is not None
    got = decode_steps(native, prompts, 6)
    feed = [g.argmax(-1).tolist() for g in got]
    for g, want in zip(got, decode_steps(reference_of(model_path), prompts, 6, feed)):
        torch.testing.assert_close(g, want, atol=1e-4, rtol=1e-4)


def test_native_step_up_to_the_last_cache_position(model_path):
    prompts = [[3 + i % 300 for i in range(250)], [7 + i % 290 for i in range(20)]]
    native = runner(model_path, kernels="native")
    got = decode_steps(native, prompts, 6)  # the first row ends at position 255 of 256
    assert native.cache.len_cap == 256
    feed = [g.argmax(-1).tolist() for g in got]
    for g, want in zip(got, decode_steps(reference_of(model_path), prompts, 6, feed)):
        torch.testing.assert_close(g, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_reduced_precision_native_step_is_as_close_to_float32_as_the_torch_step(model_path, dtype):
    """Both steps round (bf16 cache, bf16 or int8 weights); the native one must not be further from float32, but
    for what int8 adds on purpose: it also rounds the activations, to int8 blocks of 32 (llama.cpp's q8_0 x q8_0),
    so its bound is twice the torch step's (on the default model the parity gate measures it: top-1 97.9%)."""
    ref = reference_of(model_path)
    native, torch_step = runner(model_path, dtype, kernels="native"), runner(model_path, dtype)
    assert native.native is not None and torch_step.native is None
    got = decode_steps(native, PROMPTS, 6)
    feed = [g.argmax(-1).tolist() for g in got]
    want = decode_steps(ref, PROMPTS, 6, feed)
    other = decode_steps(torch_step, PROMPTS, 6, feed)
    err = max((g - w).abs().max().item() for g, w in zip(got, want))
    err_torch = max((o.float() - w).abs().max().item() for o, w in zip(other, want))
    assert err <= (2.0 if dtype == "int8" else 1.6) * err_torch + 0.02, (err, err_torch)
    agree = sum(int((g.argmax(-1) == w.argmax(-1)).sum()) for g, w in zip(got, want)) / (6 * len(PROMPTS))
    assert agree >= 0.8


def test_a_prompt_prefilled_in_the_native_step_gives_the_transformers_forward_logits(model_path):
    """Rows of one slot at successive positions: each row sees only the keys up to its own (causal), in any
    chunking and any slot; the cache it leaves decodes on as the transformers forward's does."""
    native, ref = runner(model_path, kernels="native"), reference_of(model_path)
    prompts = [[3 + (7 * i) % 300 for i in range(37)], [11 + (5 * i) % 280 for i in range(20)]]
    want = [ref.prefill(slot, p, 0, all_logits=True) for slot, p in enumerate(prompts)]
    step = native.native
    for slot in (1, 0):  # the second prompt first, into slot 1: a row's slot is its own, not its row number
        p = prompts[slot]
        native.cache.reserve(2, len(p))
        chunks = [(0, 16), (16, len(p))] if slot == 0 else [(0, len(p))]
        got = torch.cat([step(torch.tensor(p[a:b]), torch.arange(a, b), native.cache.keys, native.cache.values,
                              slots=torch.full((b - a,), slot)) for a, b in chunks])
        torch.testing.assert_close(got, want[slot], atol=1e-4, rtol=1e-4)
        last = step(torch.tensor(p[-3:]), torch.arange(len(p) - 3, len(p)), native.cache.keys,
                    native.cache.values, slots=torch.full((3,), slot), logit_rows=torch.tensor([2, 0]))
        torch.testing.assert_close(last, want[slot][[-1, -3]], atol=1e-4, rtol=1e-4)  # the picked rows, in order
    tokens, positions = [4, 4], [len(p) for p in prompts]
    for _ in range(3):
        got = native.decode(tokens, positions)
        torch.testing.assert_close(got, ref.decode(tokens, positions), atol=1e-4, rtol=1e-4)
        tokens, positions = got.argmax(-1).tolist(), [p + 1 for p in positions]


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_reduced_precision_prompts_prefill_in_the_native_step(model_path, dtype):
    """int8 and bfloat16 prompts go through the C++ step (its tiles read int8 weights as they are), no further
    from float32 than the torch step's prefill; float32 prompts stay with torch's GEMM."""
    native, torch_step, ref = runner(model_path, dtype, kernels="native"), runner(model_path, dtype), \
        reference_of(model_path)
    assert native.native_prefill and not runner(model_path, kernels="native").native_prefill
    prompt = [3 + (7 * i) % 300 for i in range(45)]
    want = ref.prefill(0, prompt, 0, all_logits=True)
    got = torch.cat([native.prefill(0, prompt[:20], 0, all_logits=True),
                     native.prefill(0, prompt[20:], 20, all_logits=True)])
    other = torch_step.prefill(0, prompt, 0, all_logits=True).float()
    err, err_torch = (got - want).abs().max().item(), (other - want).abs().max().item()
    assert err <= 1.6 * err_torch + 0.02, (err, err_torch)
    torch.testing.assert_close(native.prefill(1, prompt, 0), got[-1:], atol=1e-4, rtol=1e-4)  # the last row only


def _random_linear(kind: str, out: int, inp: int, gen: torch.Generator) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The (weight, scale, bias) the C++ step reads, and the float32 matrix it stands for."""
    w = torch.randn(out, inp, generator=gen)
    bias = torch.randn(out, generator=gen)
    if kind == "int8":
        q = Int8Linear(w, None)
        return [q.qweight, q.scale, bias], q.qweight.float() * q.scale.float()[:, None]
    if kind == "bfloat16":
        w = w.to(torch.bfloat16)
        return [w, torch.empty(0), bias], w.float()
    return [w, torch.empty(0), bias], w


@pytest.mark.parametrize("kind", ["float32", "bfloat16", "int8"])
@pytest.mark.parametrize("hidden", [64, 96, 40], ids=["vector-kernels", "odd-block-pairs", "plain-loops"])
@pytest.mark.parametrize("rows", [1, 3, 11])
def test_the_matrix_vector_kernels_on_a_head_only_model(kind, hidden, rows):
    """No layers: logits = head(norm(embedding)), against float32 torch with the same weights: one input row
    (the single-stream kernels), a partial block of rows, more rows than one tile takes, and a partial last tile."""
    gen = torch.Generator().manual_seed(0)
    (head, scale, bias), dense = _random_linear(kind, 301, hidden, gen)
    norm = torch.rand(hidden, generator=gen) + 0.5
    step = native_step.extension().DecodeStep(
        4, 2, 8, 1e-6, 8 ** -0.5, torch.ones(4), 1.0, head, scale, [], [[head, scale, bias]], norm)
    tokens = torch.tensor([0, 7, 300, 151, 5, 9, 11, 13, 17, 19, 23][:rows])
    none = torch.empty(0, dtype=torch.long)
    got = step.forward(tokens, torch.arange(rows), [], [], none, none, none)
    x = dense[tokens]
    x = norm * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))
    want = x @ dense.t() + bias
    tol = {"float32": 1e-4, "bfloat16": 2e-2, "int8": 1e-2}[kind]  # bf16: the input rounds to bf16 (AVX512-BF16)
    torch.testing.assert_close(got, want, atol=tol * want.abs().max().item(), rtol=0)
    if kind == "int8":  # the kernels' integers exactly: the input rows as the step quantizes them, then int64 sums
        exact = (_q8_blocks(x) @ head.double().t()) * scale.double() + bias.double()
        torch.testing.assert_close(got.double(), exact, atol=1e-5 * exact.abs().max().item(), rtol=0)


def _q8_blocks(x: torch.Tensor) -> torch.Tensor:
    """Rows of x as the step's int8 inputs stand for them (tiles_i8.h's quantize_row8, in the same float32
    operations): blocks of 32 with integer multipliers 1..256 of the row's unit amax / (127 * 256)."""
    out = torch.empty(x.shape, dtype=torch.float64)
    for r, row in enumerate(x.float()):
        amax = row.abs().max()
        unit = amax / torch.tensor(127.0 * 256.0) if amax > 0 else torch.tensor(1.0)
        for k0 in range(0, row.numel(), 32):
            block = row[k0:k0 + 32]
            m = torch.clamp(torch.ceil(block.abs().max() / (torch.tensor(127.0) * unit)), 1, 256)
            q = torch.clamp(torch.round(block * (torch.tensor(1.0) / (m * unit))), -127, 127)
            out[r, k0:k0 + 32] = q.double() * m.double() * unit.double()
    return out


def _add_adapters(r: ModelRunner, base, tmp_path, specs: dict[str, dict]) -> None:
    for name, lora in specs.items():
        folder = make_tiny_adapter(base, tmp_path / name, **lora)
        tensors = load_file(folder / "adapter_model.safetensors")
        config = json.loads((folder / "adapter_config.json").read_text())
        r.lora.add(name, lora_from_peft(config, tensors, linear_features(r.model), r.dtype))


ADAPTERS = {  # different ranks (16 and 8: the vector kernels; 2: the loops) and targets: every projection,
    # attention only, the MLP only
    "all": dict(seed=1, r=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                              "down_proj"]),
    "attn": dict(seed=2, r=8, target_modules=["q_proj", "v_proj", "o_proj"]),
    "mlp": dict(seed=3, r=2, lora_alpha=8, target_modules=["gate_proj", "up_proj", "down_proj"]),
}


def test_a_mixed_lora_batch_decodes_in_the_native_step_as_in_the_torch_step(tmp_path, monkeypatch):
    base = make_tiny_model("llama", tmp_path / "base")
    native, reference = runner(base, kernels="native"), runner(base)
    _add_adapters(native, base, tmp_path, ADAPTERS)
    _add_adapters(reference, base, tmp_path, ADAPTERS)
    monkeypatch.setattr(native.lean, "forward", None)  # every decode below must take the C++ step
    monkeypatch.setattr(native, "native_prefill", True)  # and every prefill (float32 would take torch's GEMM)
    monkeypatch.setattr(native.model, "forward", None)
    prompts = [list(range(5, 25)), [9, 10, 11], [12, 13, 14, 15, 16], [17, 18]]  # 20 rows of one adapter: 2 tasks
    adapters = ["all", None, "mlp", "attn"]
    for slot, (p, a) in enumerate(zip(prompts, adapters)):
        torch.testing.assert_close(native.prefill(slot, p, 0, adapter=a, all_logits=True),
                                   reference.prefill(slot, p, 0, adapter=a, all_logits=True), atol=1e-4, rtol=1e-4)
    tokens, positions = [3] * 4, [len(p) for p in prompts]
    for _ in range(4):
        got = native.decode(tokens, positions, adapters)
        torch.testing.assert_close(got, reference.decode(tokens, positions, adapters), atol=1e-4, rtol=1e-4)
        tokens, positions = got.argmax(-1).tolist(), [p + 1 for p in positions]
    base_only = native.decode(tokens, positions, [None] * 4)
    assert not torch.allclose(got, base_only, atol=1e-3)  # the adapters change their rows
    native.lora.remove("all")  # the step forgets it: row 0 is the base's again
    torch.testing.assert_close(native.decode(tokens, positions, [None, None, "mlp", "attn"])[0], base_only[0],
                               atol=1e-5, rtol=1e-5)


def test_adapters_over_an_int8_base_decode_in_the_native_step(tmp_path):
    """Over an int8 base the step holds adapters in bf16 (lora_rows.h): each row's adapter delta points where the
    torch step's float32 adapters' does, and an adapter row is about as close to the torch step as a base row is
    (both differ by the step's int8 activation blocks, which the torch step does not round)."""
    base = make_tiny_model("llama", tmp_path / "base")
    native, reference = runner(base, "int8", kernels="native", max_slots=8), runner(base, "int8", max_slots=8)
    assert native.native is not None and reference.native is None
    _add_adapters(native, base, tmp_path, ADAPTERS)
    _add_adapters(reference, base, tmp_path, ADAPTERS)
    adapters = ["all", "all", "attn", "mlp", "all", None, "all", "all"]  # 5 rows of "all": 2 tasks
    for slot in range(len(adapters)):
        for r in (native, reference):
            r.prefill(slot, [5 + slot, 6, 7], 0)
    tokens, positions = [3] * len(adapters), [3] * len(adapters)
    got, want = native.decode(tokens, positions, adapters), reference.decode(tokens, positions, adapters)
    got_base, want_base = (r.decode(tokens, positions, [None] * len(adapters)) for r in (native, reference))
    base_err = ((got_base - want_base).norm(dim=-1) / want_base.norm(dim=-1)).max().item()  # int8 activations
    for row, name in enumerate(adapters):
        delta, want_delta = got[row] - got_base[row], want[row] - want_base[row]
        if name is None:
            assert delta.abs().max() == 0
            continue
        assert want_delta.abs().max() > 1e-2  # the adapter matters on this row
        cos = torch.nn.functional.cosine_similarity(delta, want_delta, dim=0)
        err = (got[row] - want[row]).norm() / want[row].norm()
        assert cos > 0.98 and err < 1.5 * base_err + 0.01, (row, name, cos.item(), err.item(), base_err)


def test_an_adapter_on_a_layer_outside_the_step_decodes_through_torch(tmp_path):
    base = make_tiny_model("llama", tmp_path / "base")
    native, reference = runner(base, kernels="native"), runner(base)
    gen = torch.Generator().manual_seed(4)
    feats = linear_features(native.model)
    weights = {path: LoraWeights(torch.randn(feats[path][0], 4, generator=gen) * 0.1,
                                 torch.randn(4, feats[path][1], generator=gen) * 0.1)
               for path in ("model.layers.0.self_attn.q_proj", "lm_head")}
    for r in (native, reference):
        r.lora.add("head", weights)
    assert native.native.adapter_ids(["head", None], native.lora) is None  # the torch step serves its rows
    for r in (native, reference):
        r.prefill(0, [5, 6, 7], 0, adapter="head")
        r.prefill(1, [8, 9], 0)
    torch.testing.assert_close(native.decode([3, 3], [3, 2], ["head", None]),
                               reference.decode([3, 3], [3, 2], ["head", None]), atol=1e-4, rtol=1e-4)


def test_a_machine_that_cannot_build_it_decodes_through_torch_with_a_warning(tmp_path, monkeypatch, caplog):
    import torch.utils.cpp_extension

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Error building extension 'tailorlm_decode_step': g++: not found")

    monkeypatch.setattr(torch.utils.cpp_extension, "load", no_compiler)
    monkeypatch.setattr(native_step, "_built", {})  # as in a fresh process
    path = make_tiny_model("llama", tmp_path / "llama")
    with caplog.at_level(logging.WARNING):
        r = runner(path, kernels="native")
    assert r.native is None and r.lean is not None
    assert any("C++ compiler" in rec.getMessage() for rec in caplog.records)
    assert not any(type(m) is nn.Linear for m in r.model.modules())  # the torch step's packed layout
    got = decode_steps(r, PROMPTS, 3)
    feed = [g.argmax(-1).tolist() for g in got]
    for g, want in zip(got, decode_steps(reference_of(path), PROMPTS, 3, feed)):
        torch.testing.assert_close(g, want, atol=1e-4, rtol=1e-4)


def test_kernels_setting_is_checked(tmp_path):
    path = make_tiny_model("llama", tmp_path / "llama")
    with pytest.raises(InvalidRequestError, match="kernels"):
        load_model(path, kernels="cuda")
    assert runner(path, kernels="torch").native is None
    assert runner(make_tiny_model("gpt2", tmp_path / "gpt2"), kernels="native").native is None  # not modelled
    assert runner(path, "int8", kernels="native", compile=True).native is None  # compile asks for the torch step


def test_the_isa_setting_picks_the_kernels_and_refuses_what_the_cpu_cannot_run(monkeypatch):
    from tailorlm.engine.cpu import cpu_flags

    flags = cpu_flags()
    built = native_step.extension().kernel_isa()  # the setting (TAILOR_ISA) this run was started with
    wanted = get_settings().isa
    if wanted == "generic" or not {"avx2", "fma"} <= flags:
        assert built == "generic"
    elif wanted == "avx2" or "avx512f" not in flags:
        assert built == "avx2"
    else:
        assert built.startswith("avx512")
    if {"avx2", "fma"} <= flags:
        assert native_step.extension("avx2").kernel_isa() == "avx2"  # forced on AVX-512; native on AVX2
    with pytest.raises(InvalidRequestError, match="isa"):
        native_step.extension("avx9")
    monkeypatch.setattr(native_step, "cpu_flags", lambda: frozenset({"sse2"}))
    with pytest.raises(InvalidRequestError, match="lacks: avx2, fma"):
        native_step.extension("avx2")  # never a silent fallback to another build


def test_a_forced_isa_also_narrows_every_choice_made_by_isa(monkeypatch):
    """With isa avx2 on an AVX-512 CPU nothing may pick bf16 activations or bf16 training as if AVX512-BF16
    were there: the run must decide as an AVX2 machine would (engine/cpu.py effective_flags)."""
    from tailorlm.engine import cpu

    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"avx2", "fma", "f16c", "avx512f", "avx512_bf16"}))
    for isa, bf16, left in [("native", True, {"avx512f", "avx512_bf16"}), ("avx2", False, {"avx2", "fma"}),
                            ("generic", False, {"f16c"})]:
        monkeypatch.setenv("TAILOR_ISA", isa)
        get_settings.cache_clear()
        assert cpu.native_bf16() is bf16
        assert left <= cpu.effective_flags()
        assert ("isa forced" in cpu.describe()) is (isa != "native")
    assert not {"avx2", "avx512f"} & cpu.effective_flags()
    get_settings.cache_clear()
