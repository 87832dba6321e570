"""4-bit weights (q4_0-style blocks, Q4Linear): the C++ step's q4 tiles on every ISA this CPU builds, exact to
float rounding; a tiny model decoded in q4 stays close to float32; the torch forward is its dequantized matmul."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tailorlm.engine import load_model, native_step
from tailorlm.engine.layout import Int8Linear, Q4Linear, to_inference_layout
from tailorlm.engine.runner import ModelRunner
from tailorlm.errors import InvalidRequestError
from tests.test_decoder import PROMPTS, decode_steps, runner
from tests.tiny import make_tiny_model


def _buildable_isas() -> list[str]:
    """native, avx2 and generic where this CPU runs them, one each (a forced ISA equal to native is native)."""
    isas = []
    for isa in ("native", "avx2", "generic"):
        try:
            native_step._flags(isa)
        except InvalidRequestError:
            continue
        if native_step.resolved_isa(isa) not in isas:
            isas.append(native_step.resolved_isa(isa))
    return isas


def _reference(lin: Q4Linear, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 dequantized weights x dequantized int16 activations, and the sum of |terms| (the rounding scale).

    The inputs `e` are integers with max |e| = 8191 (kQ16), so the step's per-row quantization of their RMS norm
    gives back exactly e, with the row scale 1 / rms(e)."""
    w = lin.dequantized().double()
    x = e.double() / e.double().pow(2).mean(-1, keepdim=True).sqrt()
    return x @ w.t(), x.abs() @ w.abs().t()


@pytest.mark.parametrize("isa", _buildable_isas())
@pytest.mark.parametrize("n", [64, 96, 576])
@pytest.mark.parametrize("rows", [1, 3, 8, 16])
def test_the_q4_tiles_are_exact_to_float_rounding(isa, n, rows):
    """A head-only step (no layers): logits = q4 head x the quantized input rows, against float64. 43 output
    rows: five full tiles (the vector kernels) and a partial one (plain loops)."""
    gen = torch.Generator().manual_seed(n + rows)
    vocab = 43
    lin = Q4Linear(torch.randn(vocab, n, generator=gen), None, dtype=torch.float32)
    e = torch.randint(-8191, 8192, (vocab, n), generator=gen).float()
    e[:, 0] = 8191.0  # each row's amax: its int16 quantization is e itself
    step = native_step.extension(isa).DecodeStep(
        4, 2, 8, 0.0, 8 ** -0.5, torch.ones(4), 1.0, e, torch.empty(0), [], [[lin.qweight, lin.scale, torch.empty(0)]],
        torch.ones(n))
    tokens = torch.randperm(vocab, generator=gen)[:rows]
    none = torch.empty(0, dtype=torch.long)
    got = step.forward(tokens, torch.arange(rows), [], [], none, none, none).double()
    want, scale = _reference(lin, e[tokens])
    assert ((got - want).abs() <= 2e-6 * scale + 1e-9).all(), (got - want).abs().max()


def test_q4_linear_rounds_each_block_to_its_nearest_level_and_forward_is_its_dequantized_matmul():
    torch.manual_seed(0)
    w, bias = torch.randn(40, 96), torch.randn(40)
    lin = Q4Linear(w, bias, dtype=torch.float32)
    assert lin.qweight.shape == (40, 48) and lin.qweight.dtype == torch.uint8 and lin.scale.shape == (40, 3)
    scale = lin.scale.repeat_interleave(32, dim=1)
    err, levels = (lin.dequantized() - w).abs(), w / scale
    # the nearest of the 16 levels; only the far side's extreme (level 8, as in q4_0) clamps to 7
    assert (err[levels <= 7.5] <= 0.5 * scale.abs()[levels <= 7.5] + 1e-6).all()
    assert (err <= scale.abs() + 1e-6).all()
    blocks = w.view(40, 3, 32)
    extreme = blocks.gather(2, blocks.abs().argmax(2, keepdim=True)).squeeze(2)  # maps to level -8 exactly
    torch.testing.assert_close(lin.scale * -8, extreme)
    # byte j of a block: element j low, element j + 16 high (the layout the C++ step reads)
    q = lin.qweight[0, :16]
    torch.testing.assert_close((q & 0x0F).float() - 8, torch.round(w[0, :16] / lin.scale[0, 0]).clamp(-8, 7))
    torch.testing.assert_close((q >> 4).float() - 8, torch.round(w[0, 16:32] / lin.scale[0, 0]).clamp(-8, 7))
    for rows in (1, 3, 70):
        x = torch.randn(rows, 96)
        torch.testing.assert_close(lin(x), x @ lin.dequantized().t() + bias)
    assert lin(torch.randn(2, 5, 96)).shape == (2, 5, 40)


def test_q4_refuses_in_features_off_the_block_and_the_layout_keeps_such_layers_int8(caplog):
    with pytest.raises(ValueError, match="divisible by 32"):
        Q4Linear(torch.randn(8, 40), None)
    model = nn.Sequential(nn.Linear(64, 40), nn.Linear(40, 64))
    to_inference_layout(model, int8=True, q4=True)
    assert type(model[0]) is Q4Linear and type(model[1]) is Int8Linear
    assert "stay int8" in caplog.text


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model("llama", tmp_path_factory.mktemp("llama"), initializer_range=0.05)


def _dequantized_reference(path, dtype: torch.dtype) -> ModelRunner:
    """A float32 torch-step runner whose weights are what the q4 load reads: each linear layer rounded to
    `dtype` (the q4 load's activation dtype) then q4 (the head: int8, tied with the embedding), dequantized."""
    model = load_model(path, dtype="float32").model
    with torch.no_grad():
        for lin in [m for m in model.modules() if type(m) is nn.Linear]:
            w = lin.weight.to(dtype)
            kind = Int8Linear if lin is model.lm_head else Q4Linear
            lin.weight.copy_(kind(w, None, dtype=torch.float32).dequantized())
    return ModelRunner(model, max_slots=4, context_length=256, kernels="torch")


def _cosines(got, want) -> torch.Tensor:
    return torch.cat([torch.nn.functional.cosine_similarity(g.float(), w, dim=-1) for g, w in zip(got, want)])


def test_a_q4_model_decodes_in_the_native_step_as_its_dequantized_weights(tiny):
    """Greedy decode through the engine (prompts through the C++ step's q4 tiles as well): the logits of float32
    over the dequantized weights, to the rounding of the activations (int16 rows for the q4 layers, int8 blocks for
    the int8 head) and the bf16 cache; and near float32's own. Measured here: cosine 0.99998 to the dequantized
    model (top-1 17 of 18: a near tie the head's int8 activations flip), mean cosine 0.985 to float32;
    with the nibbles of every byte swapped (a layout bug) 0.20 and top-1 0.17, so both bounds catch it."""
    q4 = runner(tiny, "q4", kernels="native")
    assert q4.native is not None and q4.native_prefill
    layers = q4.model.model.layers
    assert type(layers[0].self_attn.q_proj) is Q4Linear and type(layers[0].mlp.down_proj) is Q4Linear
    assert type(q4.model.lm_head) is Int8Linear  # the head (and the tied embedding) stay int8
    got = decode_steps(q4, PROMPTS, 6)
    feed = [g.argmax(-1).tolist() for g in got]
    want = decode_steps(_dequantized_reference(tiny, q4.dtype), PROMPTS, 6, feed)
    agree = sum(int((g.argmax(-1) == w.argmax(-1)).sum()) for g, w in zip(got, want)) / (6 * len(PROMPTS))
    assert _cosines(got, want).min() >= 0.999 and agree >= 0.9, (_cosines(got, want).min(), agree)
    assert _cosines(got, decode_steps(runner(tiny), PROMPTS, 6, feed)).mean() >= 0.95


def test_q4_without_the_native_step_serves_int8(tiny, caplog):
    r = runner(tiny, "q4", kernels="torch")
    assert not any(type(m) is Q4Linear for m in r.model.modules())
    assert "serving weight-only int8" in caplog.text
