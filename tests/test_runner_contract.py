"""One contract, every runner: the native engine's torch step and C++ step, llama.cpp (an f32 GGUF export) and
onnxruntime (an f32 ONNX export) run the same cases on the same tiny random weights, against transformers.

What a runner declares in its capabilities it must do (LoRA adapters, prefix caching, a KV budget); what it does
not declare is refused with a clear error or left off, and every other case holds alike for all of them.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tailorlm.engine import Engine, LoadedModel, SamplingParams, load_model
from tailorlm.errors import UnsupportedModelError
from tests.tiny import make_tiny_adapter, make_tiny_model, save_tiny_tokenizer

CTX = 256
SHARED = [1] + [10 + (i * 7) % 300 for i in range(69)]  # 70 tokens: one 64-token prefix-cache block
PROMPTS = [[5, 6, 7, 8], [9, 10], list(range(20, 50)), [3], SHARED + [5, 6], SHARED + [8]]
LENGTHS = [12 + 2 * i for i in range(len(PROMPTS))]  # rows finish at different steps, so slots move
# backend -> the packages it needs beyond the native engine
BACKENDS = {"torch": (), "native": (), "llama.cpp": ("llama_cpp", "gguf"), "onnxruntime": ("onnxruntime", "onnxscript")}


def greedy(n: int, **kw) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, **kw)


def close(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Equal up to float32 rounding of a different summation order (llama.cpp's and onnxruntime's kernels)."""
    return got.shape == want.shape and bool((got - want).abs().max() <= 1e-4 * want.abs().max())


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """The tiny llama every backend runs, with the tokenizer the GGUF export needs."""
    return save_tiny_tokenizer(make_tiny_model("llama", tmp_path_factory.mktemp("contract") / "hf"))


@pytest.fixture(scope="module")
def reference(source):
    """transformers on the source weights: greedy tokens (base or through a PEFT adapter) and log-probabilities."""
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    seen: dict[tuple, list[int]] = {}

    def generate(prompt: list[int], n: int, adapter: Path | None = None) -> list[int]:
        key = (tuple(prompt), n, adapter)
        if key not in seen:
            m = model
            if adapter is not None:
                from peft import PeftModel

                m = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32),
                                              adapter)
            out = m.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=None,
                             pad_token_id=0, attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
            seen[key] = out[0, len(prompt):].tolist()
        return seen[key]

    def logprobs(ids: list[int]) -> torch.Tensor:
        with torch.no_grad():
            return torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)

    return SimpleNamespace(generate=generate, logprobs=logprobs)


@pytest.fixture(scope="module", params=list(BACKENDS))
def backend(request, source, tmp_path_factory):
    """opens(): a fresh LoadedModel of the source on this backend (each engine or runner gets its own)."""
    name = request.param
    missing = [p for p in BACKENDS[name] if importlib.util.find_spec(p) is None]
    if missing:
        pytest.skip(f"the {name} backend needs {', '.join(missing)}, which is not installed")
    if name == "native":
        from tailorlm.engine import native_step

        try:
            native_step.extension()
        except RuntimeError as exc:
            pytest.skip(str(exc))
    if name in ("torch", "native"):
        return lambda: load_model(source, dtype="float32", kernels=name)
    folder = tmp_path_factory.mktemp(name)
    if name == "llama.cpp":
        from tailorlm.backends import llamacpp
        from tailorlm.export.gguf import write_gguf

        write_gguf(source, folder / llamacpp.GGUF_FILE, "f32")
        return lambda: llamacpp.load(folder, SimpleNamespace(name="tiny", context_length=CTX), SimpleNamespace(threads=2))
    from tailorlm.backends import onnxrt
    from tailorlm.export.onnx import write_onnx

    write_onnx(source, folder / "onnx")
    return lambda: onnxrt.load(folder / "onnx", None, None)


@pytest.fixture(scope="module")
def engine(backend):
    """An engine with a prefix cache and a KV budget: used where the runner declares them, else left off."""
    eng = Engine(backend(), max_batch=4, prefix_cache_bytes=16 * 2**20, kv_budget_bytes=256 * 2**20)
    yield eng
    eng.shutdown()


def test_declared_capabilities_are_what_the_runner_offers(backend):
    loaded: LoadedModel = backend()
    runner = loaded.runner_factory(1, CTX)
    caps = runner.capabilities
    assert caps == loaded.runner_factory.capabilities  # known before a runner is built
    assert callable(getattr(runner, "kv_peak_bytes", None)) == caps.kv_budget
    assert all(callable(getattr(runner, m, None)) for m in ("read_kv", "write_kv")) == caps.prefix_cache
    if hasattr(runner, "native"):  # the native engine: the backend's name says which decode step it runs
        assert (runner.native is not None) == (loaded.kernels == "native")


def test_greedy_tokens_equal_transformers_generate(engine, reference):
    """All prompts at once: rows of different lengths decode together, finish apart and move slots."""
    handles = [engine.submit(p, greedy(n)) for p, n in zip(PROMPTS, LENGTHS)]
    assert [h.tokens() for h in handles] == [reference.generate(p, n) for p, n in zip(PROMPTS, LENGTHS)]
    cache = engine.core.prefix_cache
    assert (cache.hit_tokens > 0) == engine.capabilities.prefix_cache  # SHARED's block, reused where declared


def test_stop_tokens_eos_and_length(engine, backend, reference):
    full = reference.generate(PROMPTS[0], 10)
    stop_at = full[4]
    events = engine.generate(PROMPTS[0], greedy(10, stop_token_ids=[stop_at]))
    assert [e.token_id for e in events] == full[: full.index(stop_at) + 1]
    assert events[-1].finish_reason == "stop"
    assert engine.generate(PROMPTS[0], greedy(3))[-1].finish_reason == "length"
    eos = Engine(dataclasses.replace(backend(), eos_token_ids=[full[2]]), max_batch=2)
    try:
        events = eos.generate(PROMPTS[0], SamplingParams(temperature=0, max_tokens=10))
        assert [e.token_id for e in events] == full[: full.index(full[2]) + 1]
        assert events[-1].finish_reason == "stop"
        assert len(eos.generate(PROMPTS[0], greedy(10))) == 10  # ignore_eos runs on
    finally:
        eos.shutdown()


def test_logprobs_are_the_reference_log_softmax(engine, reference):
    prompt = PROMPTS[2]
    events = engine.generate(prompt, greedy(4, logprobs=3))
    logp = reference.logprobs(prompt + [e.token_id for e in events])
    for i, e in enumerate(events):
        row = logp[len(prompt) - 1 + i]
        assert e.logprob <= 0 and e.logprob == pytest.approx(float(row[e.token_id]), abs=1e-3)
        assert len(e.top_logprobs) == 3 and e.top_logprobs[0][0] == e.token_id  # greedy: the top one is the token
        values = [lp for _, lp in e.top_logprobs]
        assert values == sorted(values, reverse=True)
        assert values == pytest.approx(row.topk(3).values.tolist(), abs=1e-3)


def test_lora_adapters_where_declared_and_a_clear_error_where_not(backend, source, reference, tmp_path):
    folder = make_tiny_adapter(source, tmp_path / "a", seed=1, r=4, target_modules=["q_proj", "v_proj", "down_proj"])
    tensors = load_file(folder / "adapter_model.safetensors")
    config = json.loads((folder / "adapter_config.json").read_text())
    loaded: LoadedModel = backend()
    engine = Engine(loaded, max_batch=4)
    try:
        if not engine.capabilities.lora:
            with pytest.raises(UnsupportedModelError, match="merged into its base"):
                engine.load_adapter("a", tensors, config)
            runner = loaded.runner_factory(1, CTX)
            assert "a" not in runner.lora
            for forward in (lambda: runner.prefill(0, [5, 6], 0, adapter="a"),
                            lambda: runner.decode([5], [0], ["a"])):
                with pytest.raises(UnsupportedModelError, match="merged into its base"):
                    forward()
            return
        engine.load_adapter("a", tensors, config)
        handles = [engine.submit(PROMPTS[0], greedy(12), adapter=a) for a in ("a", None, "a")]  # one mixed batch
        tuned, base = reference.generate(PROMPTS[0], 12, folder), reference.generate(PROMPTS[0], 12)
        assert tuned != base
        assert [h.tokens() for h in handles] == [tuned, base, tuned]
    finally:
        engine.shutdown()


def test_a_prompt_prefilled_in_chunks_equals_one_prefill(backend):
    runner = backend().runner_factory(2, CTX)
    prompt = [3 + (7 * i) % 300 for i in range(40)]
    whole = runner.prefill(0, prompt, 0, all_logits=True)
    assert whole.dtype == torch.float32 and whole.shape == (len(prompt), 320)
    chunks = [(0, 16), (16, 25), (25, len(prompt))]
    parts = torch.cat([runner.prefill(1, prompt[a:b], a, all_logits=True) for a, b in chunks])
    assert close(parts, whole)
    assert close(runner.prefill(1, prompt[25:], 25), whole[-1:])  # the last row only, over the same cache
    token = int(whole[-1].argmax())
    rows = runner.decode([token, token], [len(prompt), len(prompt)])  # the caches they left decode alike
    assert close(rows[1], rows[0])
