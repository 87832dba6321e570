"""`tailor plan` and serve's pre-flight: the documented formula, targets, exit codes, and the estimate
against the measured peak RSS of the real default model on the native engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from torch import nn
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from tailorlm.config import DEFAULT_MODEL, Settings
from tailorlm.plan import estimate as est_mod
from tailorlm.plan import targets
from tailorlm.plan.estimate import MIB, ModelShape, weight_bytes
from tailorlm.plan.preflight import WillNotFitError, check_serve
from tailorlm.plan.stored import plan_stored
from tailorlm.errors import InvalidRequestError
from tailorlm.store import AdapterStore, ModelStore
from tests.tiny import make_tiny_adapter, make_tiny_model

LAPTOP = targets.TARGETS["laptop-16gb"]
# SmolLM2-135M-Instruct as its config.json describes it.
SMOLLM2 = ModelShape(parameters=134_515_008, layers=30, kv_heads=3, head_dim=64, hidden=576, vocab=49152,
                     tied=True, max_context=8192)


@pytest.fixture
def tiny(tailor_home: Path, tmp_path: Path) -> Path:
    """A tiny random llama (2 layers, hidden 64, 2 KV heads of 16, untied head) in the isolated store."""
    folder = make_tiny_model("llama", tmp_path / "tiny")
    ModelStore(tailor_home).import_path(folder, name="tiny", show_progress=False)
    return folder


@pytest.mark.parametrize("kernels", ["native", "torch"])
def test_estimate_is_the_documented_formula(tiny: Path, tailor_home: Path, kernels: str) -> None:
    est = plan_stored("tiny", home=tailor_home, target=LAPTOP, context=200, parallel=3, kernels=kernels)
    model = AutoModelForCausalLM.from_pretrained(tiny)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    stored = ModelStore(tailor_home).get("tiny").files["model.safetensors"].size
    kv = 2 * 2 * 2 * 16 * 4 * 256 * 3  # 2 x layers x kv_heads x head_dim x f32 x context (256-block) x parallel
    # growth: the generation alive during the last growth; within one block, the 2 slots before the 3rd came
    growth = 2 * 2 * 2 * 16 * 4 * 256 * 2
    # the C++ step reads a Llama's f32 weights in place; the torch step re-lays them (a second copy)
    layout = 0 if kernels == "native" else linear * 4
    assert est.parts == {"runtime": 480 * MIB, "weights": stored, "layout copy": layout, "kv cache": kv,
                         "kv growth": growth, "adapters": 0, "prefix cache": 0}
    assert est.total == sum(est.parts.values()) and est.fits and est.verdict == "fits"
    assert est.available == LAPTOP.available_bytes and est.headroom == LAPTOP.available_bytes - est.total
    fraction = est_mod.DECODE_FRACTION[("native", "f32")] if kernels == "native" else \
        est_mod.TORCH_STEP_FRACTION["f32"]
    bandwidth = LAPTOP.bandwidth_gbs * 1e9 * fraction
    kv_read = 2 * 2 * 2 * 16 * 4 * 200 / 2
    assert est.decode_tok_s == pytest.approx(bandwidth / (linear * 4 + kv_read))
    assert est.aggregate_tok_s == pytest.approx(3 * bandwidth / (linear * 4 + 3 * kv_read))


def test_an_adapter_is_planned_over_its_base_with_its_stored_size(tiny: Path, tailor_home: Path,
                                                                   tmp_path: Path) -> None:
    folder = make_tiny_adapter(tiny, tmp_path / "adapter", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    adapter = AdapterStore(tailor_home).add("ft:tiny:demo:1", "tiny", folder)
    base = plan_stored("tiny", home=tailor_home, target=LAPTOP, context=128)
    tuned = plan_stored("ft:tiny:demo:1", home=tailor_home, target=LAPTOP, context=128)
    assert tuned.model == "ft:tiny:demo:1" and tuned.parts["adapters"] == adapter.size > 0
    assert tuned.total == base.total + adapter.size
    with pytest.raises(InvalidRequestError, match="no LoRA adapters"):
        plan_stored("ft:tiny:demo:1", home=tailor_home, target=LAPTOP, quant="q8_0")


def test_quantized_weights_match_llama_cpp_sizes() -> None:
    # PEERS.md: the default model is 538 MB in f32, 269 MB in f16, 143 MB in q8_0.
    assert weight_bytes(SMOLLM2, "f32") == 134_515_008 * 4
    assert weight_bytes(SMOLLM2, "f16") == weight_bytes(SMOLLM2, "bf16") == 134_515_008 * 2
    assert weight_bytes(SMOLLM2, "q8_0") == pytest.approx(143e6, rel=0.01)
    q4 = weight_bytes(SMOLLM2, "q4_0")
    assert 134_515_008 * 18 / 32 < q4 < weight_bytes(SMOLLM2, "q8_0")  # q6_K head on top of q4_0 blocks
    assert 134_515_008 < weight_bytes(SMOLLM2, "int8") < weight_bytes(SMOLLM2, "f16")


def test_llama_cpp_preallocates_an_f16_cache() -> None:
    est = est_mod.estimate(SMOLLM2, name="m", quant="q8_0", context=4096, parallel=2, target=LAPTOP)
    assert est.engine == "llama.cpp" and est.parts["layout copy"] == 0 and est.parts["kv growth"] == 0
    assert est.parts["kv cache"] == 2 * 30 * 3 * 64 * 2 * 4096 * 2


def test_rpi5_with_a_huge_context_does_not_fit() -> None:
    rpi = targets.TARGETS["rpi5-8gb"]
    small = est_mod.estimate(SMOLLM2, name="m", quant="f32", context=2048, parallel=1, target=rpi)
    huge = est_mod.estimate(SMOLLM2, name="m", quant="f32", context=8192, parallel=32, target=rpi)
    assert small.fits and not huge.fits and huge.verdict == "does not fit" and huge.headroom < 0


def test_gpu_targets_have_no_cpu_layout_copy() -> None:
    gpu = targets.TARGETS["workstation-24gb-gpu"]
    est = est_mod.estimate(SMOLLM2, name="m", quant="bf16", context=8192, parallel=8, target=gpu)
    assert gpu.gpu and est.parts["layout copy"] == 0 and est.parts["runtime"] == est_mod.CUDA_CONTEXT_BYTES


def test_this_machine_reads_meminfo_and_caches_bandwidth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    total, available = targets.meminfo()
    assert 0 < available <= total
    calls: list[int] = []
    monkeypatch.setattr(targets, "measure_bandwidth", lambda threads=0: calls.append(threads) or 12.5)
    first = targets.this_machine(tmp_path)
    second = targets.this_machine(tmp_path)
    assert first.bandwidth_gbs == second.bandwidth_gbs == 12.5 and calls == [0]
    assert (tmp_path / targets.BANDWIDTH_CACHE).is_file()


def test_measured_bandwidth_is_plausible() -> None:
    assert 0.5 < targets.measure_bandwidth(threads=2, size_bytes=64 * MIB, repeats=2) < 2000


def _plan(*args: str) -> tuple[int, str, str]:
    from tailorlm.cli import _register, app

    _register()
    out = CliRunner().invoke(app, ["plan", *args], env={"COLUMNS": "200"})
    return out.exit_code, out.stdout, out.stderr


def test_cli_fits_exits_0_and_prints_the_table(tiny: Path) -> None:
    code, out, _ = _plan("tiny", "--context", "128", "--parallel", "2", "--target", "laptop-16gb")
    assert code == 0
    assert out.startswith("fits:") and "kv cache" in out and "tok/s" in out and "laptop-16gb" in out


def test_cli_does_not_fit_exits_1(tiny: Path) -> None:
    code, out, _ = _plan("tiny", "--parallel", "200000", "--target", "rpi5-8gb")
    assert code == 1 and out.startswith("does not fit:") and "kv growth" in out


def test_cli_json(tiny: Path) -> None:
    code, out, _ = _plan("tiny", "--quant", "q8_0", "--target", "laptop-8gb", "--json")
    data = json.loads(out)
    assert code == 0 and data["engine"] == "llama.cpp" and data["fits"] is True
    assert data["total"] == sum(data["parts"].values())


@pytest.mark.parametrize("args, says", [
    (("nope",), "nope is no model, adapter or preset in the store"),
    (("tiny", "--target", "mainframe"), "unknown target"),
    (("tiny", "--quant", "q3_k"), "unknown quantization"),
    (("tiny", "--context", "100000"), "beyond tiny's context length 256"),
])
def test_cli_bad_input_exits_2_with_one_line(tiny: Path, args: tuple[str, ...], says: str) -> None:
    code, out, err = _plan(*args, "--target", "laptop-8gb") if "--target" not in args else _plan(*args)
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1 and out == ""


def test_serve_refuses_what_will_not_fit(tiny: Path, tailor_home: Path) -> None:
    settings = Settings(home=tailor_home, default_model="tiny", memory_budget_gb=0.01)
    with pytest.raises(WillNotFitError, match=r"one request at its full context 256 needs ~\d+ MiB .* memory budget "
                                              r"is 10 MiB"):
        check_serve(settings)
    check_serve(Settings(home=tailor_home, default_model="tiny", max_batch=4))  # fits: no error
    check_serve(Settings(home=tailor_home, default_model="absent"))  # nothing to preload: nothing to check
    env = {**os.environ, "TAILOR_HOME": str(tailor_home)}
    out = subprocess.run([sys.executable, "-m", "tailorlm", "serve", "--default-model", "tiny", "--port", "0",
                          "--memory-budget-gb", "0.01"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "raise --memory-budget-gb" in out.stderr


def test_kv_growth_is_the_previous_cache_generation() -> None:
    per_token = SMOLLM2.kv_bytes_per_token(4)
    assert est_mod.kv_growth("native", per_token, 2048, 8) == per_token * 8 * (2048 - 256)  # last block step
    assert est_mod.kv_growth("native", per_token, 256, 8) == per_token * 4 * 256  # last slot doubling
    assert est_mod.kv_growth("native", per_token, 256, 1) == 0
    assert est_mod.kv_growth("llama.cpp", per_token, 2048, 8) == 0


def test_serve_no_preflight_skips_the_check(tiny: Path, tailor_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tailorlm.cli import _register, app
    from tailorlm.cli import serve as serve_cli

    _register()
    served: list[Settings] = []
    monkeypatch.setattr(serve_cli, "run_server", served.append)
    args = ["serve", "--default-model", "tiny", "--memory-budget-gb", "0.01"]
    refused = CliRunner().invoke(app, args)
    assert isinstance(refused.exception, WillNotFitError) and served == []
    assert CliRunner().invoke(app, [*args, "--no-preflight"]).exit_code == 0 and len(served) == 1


# -- the acceptance test: the estimate against measured peak memory ------------------------------------------

_MEASURE = """
import sys
import torch
from tailorlm.config import Settings
from tailorlm.engine import SamplingParams
from tailorlm.runtime import open_model

home, context, parallel = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(2)
# the prefix cache is off here: its part of the estimate is its capacity, bounded by construction
model = open_model({model!r}, settings=Settings(home=home, threads=2, max_batch=parallel, verify_digests=False,
                                                prefix_cache_mb=0),
                   show_progress=False)
# One request's prompt ends just short of the last cache block and its decode crosses into it: the cache's
# last growth allocates `context` positions (zero-filled, so resident) while the previous generation is
# alive. The others run beside it, so the cache holds `parallel` slots.
long = [1] + [100 + i % 5000 for i in range(context - 259)]
handles = [model.engine.submit(long, SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))]
handles += [model.engine.submit([1, 200 + i, 300], SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))
            for i in range(parallel - 1)]
for h in handles:
    h.tokens()
status = open("/proc/self/status").read()
print(int(next(l for l in status.splitlines() if l.startswith("VmHWM")).split()[1]) * 1024)
"""


def measured_peak_rss(home: Path, context: int, parallel: int) -> int:
    """Peak RSS (VmHWM, bytes) of a fresh process that loads the default model and serves this configuration."""
    out = subprocess.run([sys.executable, "-c", _MEASURE.format(model=DEFAULT_MODEL), str(home), str(context),
                          str(parallel)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("context, parallel", [(2048, 1), (2048, 16)])
def test_estimate_within_20_percent_of_measured_peak(default_store_home: Path, context: int, parallel: int) -> None:
    est = plan_stored(DEFAULT_MODEL, home=default_store_home, target=LAPTOP, context=context, parallel=parallel)
    measured = measured_peak_rss(default_store_home, context, parallel)
    print(f"context {context} x {parallel}: estimate {est.total / MIB:,.0f} MiB, measured {measured / MIB:,.0f} MiB")
    assert est.total == pytest.approx(measured, rel=0.20)


def test_serve_sizes_the_kv_budget_and_keeps_max_batch(tiny: Path, tailor_home: Path) -> None:
    """max batch is never shrunk for memory: the KV budget is what the memory leaves, and the engine admits
    requests within it (test_engine: test_kv_budget_holds_requests_until_they_fit)."""
    from tailorlm.plan.preflight import serve_estimate

    one = serve_estimate(Settings(home=tailor_home, default_model="tiny", max_batch=1))
    fixed = one.total - one.parts["kv cache"] - one.parts["kv growth"]
    budget_gb = (fixed + 2 * MIB) / 1024**3  # 2 MiB of KV: a few requests at full context (128 KiB each), not 32
    sized = check_serve(Settings(home=tailor_home, default_model="tiny", memory_budget_gb=budget_gb))
    assert sized.settings.max_batch == 32 and 1 < sized.full_context < 32 and sized.settings.kv_cache_mb == 2
    assert serve_estimate(sized.settings, sized.full_context).fits
    assert not serve_estimate(sized.settings, sized.full_context + 1).fits
    assert f"{sized.full_context} of max batch 32 requests at full context 256" in sized.line
    given = check_serve(Settings(home=tailor_home, default_model="tiny", memory_budget_gb=budget_gb, max_batch=32,
                                 kv_cache_mb=3))
    assert given.settings.kv_cache_mb == 3 and given.settings.max_batch == 32  # the user's choices stand


def test_one_long_request_does_not_multiply_the_cache_rows() -> None:
    import torch

    from tailorlm.engine.kv_cache import SlotKVCache

    cache = SlotKVCache(2, 2, 8, dtype=torch.float32, max_slots=8, max_len=4096)
    for length in range(256, 4097, 256):
        cache.reserve(1, length)
    assert cache.slot_cap == 1 and cache.len_cap == 4096
    cache.reserve(3, 100)
    assert cache.slot_cap == 3  # more requests at once: now the rows grow
