"""GGUF export and the llama.cpp backend: metadata read back, logits parity with the native runner.

The cases every runner shares (greedy parity with transformers, stops, logprobs, adapters, chunked prefill) are
in tests/test_runner_contract.py.
"""

from __future__ import annotations

import ctypes
import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tailorlm.backends import llamacpp
from tailorlm.engine import Engine, LoadedModel, SamplingParams, load_model
from tailorlm.engine.runner import ModelRunner
from tailorlm.errors import InvalidRequestError, TailorError, UnsupportedModelError
from tailorlm.export.gguf import write_gguf
from tests.tiny import VOCAB, make_tiny_model, save_tiny_tokenizer

gguf = pytest.importorskip("gguf")
needs_llama_cpp = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                     reason="the llama.cpp backend is not installed (tailorlm[llama-cpp])")

ARCHS = ("llama", "qwen2", "mistral")
QUANTS = ("f32", "f16", "bf16", "q8_0", "q4_0")
PROMPTS = [[5, 6, 7, 8], [9, 10], list(range(20, 50)), [3], [7] * 40]
T = gguf.GGMLQuantizationType


def greedy(n: int = 16) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory):
    """export(arch, quant) -> store folder holding model.gguf (built once per module), and the HF source."""
    made: dict[tuple[str, str], Path] = {}
    sources: dict[str, Path] = {}

    def export(arch: str, quant: str) -> tuple[Path, Path]:
        if arch not in sources:
            src = tmp_path_factory.mktemp(arch)
            sources[arch] = save_tiny_tokenizer(make_tiny_model(arch, src))  # mistral runs as llama in llama.cpp
        if (arch, quant) not in made:
            store = tmp_path_factory.mktemp(f"{arch}-{quant}")
            write_gguf(sources[arch], store / llamacpp.GGUF_FILE, quant)
            made[arch, quant] = store
        return sources[arch], made[arch, quant]

    return export


def open_gguf(store: Path, context_length: int | None = None) -> LoadedModel:
    manifest = SimpleNamespace(name=store.name, context_length=context_length)
    return llamacpp.load(store, manifest, SimpleNamespace(threads=2))


def field(reader, key: str):
    return reader.get_field(key).contents()


# -- the file ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("quant", QUANTS)
@pytest.mark.parametrize("arch", ARCHS)
def test_metadata_and_tensors_read_back(exports, arch: str, quant: str):
    from transformers import AutoTokenizer

    src, store = exports(arch, quant)
    reader = gguf.GGUFReader(store / llamacpp.GGUF_FILE)
    tok = AutoTokenizer.from_pretrained(src)
    assert field(reader, "general.architecture") == ("llama" if arch == "mistral" else arch)
    assert field(reader, "tokenizer.chat_template") == (src / "chat_template.jinja").read_text()
    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    assert field(reader, "tokenizer.ggml.pre") == ("qwen2" if arch == "qwen2" else "gpt-2")
    assert field(reader, "tokenizer.ggml.bos_token_id") == tok.bos_token_id == 1
    assert field(reader, "tokenizer.ggml.eos_token_id") == tok.eos_token_id == 2
    tokens = field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == VOCAB and tokens[: len(tok)] == tok.convert_ids_to_tokens(list(range(len(tok))))
    file_type = "ALL_F32" if quant == "f32" else f"MOSTLY_{quant.upper()}"
    assert field(reader, "general.file_type") == gguf.LlamaFileType[file_type]
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["output_norm.weight"] == T.F32 and types["blk.0.attn_norm.weight"] == T.F32
    assert types["blk.1.ffn_down.weight"] == T[quant.upper()]
    assert types["output.weight"] == (T.Q8_0 if quant == "q4_0" else T[quant.upper()])
    if arch == "qwen2":
        assert types["blk.0.attn_q.bias"] == T.F32


def test_rows_that_are_not_whole_blocks_fall_back_to_f16(tmp_path: Path):
    save_tiny_tokenizer(make_tiny_model("llama", tmp_path / "src", hidden_size=48, num_hidden_layers=1,
                                        tie_word_embeddings=True))
    seen: list[tuple[int, int]] = []
    write_gguf(tmp_path / "src", tmp_path / "m.gguf", "q8_0", progress=lambda done, total: seen.append((done, total)))
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(tmp_path / "m.gguf").tensors}
    assert types["blk.0.attn_q.weight"] == T.F16  # rows of 48 values
    assert types["blk.0.ffn_down.weight"] == T.Q8_0  # rows of 128 values
    assert "output.weight" not in types  # tied: llama.cpp reuses token_embd
    assert seen[-1] == (len(types), len(types)) and [d for d, _ in seen] == list(range(1, len(types) + 1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf", "src"]  # no .partial left behind


def test_unsupported_architecture_and_quant_are_refused(tmp_path: Path):
    src = make_tiny_model("gpt2", tmp_path / "gpt2")
    with pytest.raises(UnsupportedModelError, match="'gpt2'.*llama, mistral, qwen2"):
        write_gguf(src, tmp_path / "m.gguf", "q8_0")
    with pytest.raises(InvalidRequestError, match="q3_k"):
        write_gguf(src, tmp_path / "m.gguf", "q3_k")
    assert not (tmp_path / "m.gguf").exists() and not (tmp_path / "m.partial").exists()


@needs_llama_cpp
@pytest.mark.parametrize("arch", ARCHS)
def test_llama_cpp_tokenizes_like_the_source_tokenizer(exports, arch: str):
    from transformers import AutoTokenizer

    src, store = exports(arch, "f16")
    model = llamacpp.GGUFModel(store / llamacpp.GGUF_FILE)
    tok = AutoTokenizer.from_pretrained(src)
    for text in ["Hello world, how are you today?", "The capital of France is Paris.", "  x  42\nok<|im_end|>"]:
        assert llama_tokenize(model, text) == tok.encode(text, add_special_tokens=False)


def llama_tokenize(model: llamacpp.GGUFModel, text: str) -> list[int]:
    data = text.encode()
    out = (ctypes.c_int32 * (len(data) + 8))()
    n = model.lib.llama_tokenize(model.vocab, data, len(data), out, len(out), False, True)
    assert n >= 0
    return list(out[:n])


# -- the runner ----------------------------------------------------------------------------------------
@needs_llama_cpp
@pytest.mark.parametrize("arch", ARCHS)
def test_f32_prefill_logits_match_the_native_runner(exports, arch: str):
    src, store = exports(arch, "f32")
    loaded = open_gguf(store)
    gguf_arch = "llama" if arch == "mistral" else arch
    facts = (loaded.backend, loaded.model_type, loaded.vocab_size, loaded.eos_token_ids)
    assert facts == ("llama.cpp", gguf_arch, VOCAB, [2])
    assert loaded.context_length == 256 and open_gguf(store, context_length=100).context_length == 100
    ours = loaded.runner_factory(4, loaded.context_length)
    native = ModelRunner(load_model(src, dtype="float32").model, max_slots=4, context_length=256)
    prompt = PROMPTS[2]
    for slot, start, all_logits in [(0, 0, True), (1, 0, False), (1, 10, True), (0, 25, False)]:
        a = ours.prefill(slot, prompt[start:], start, all_logits=all_logits)
        b = native.prefill(slot, prompt[start:], start, all_logits=all_logits)
        assert a.dtype == torch.float32 and a.shape == b.shape
        assert (a - b).abs().max() <= 1e-3 * b.abs().max()


def run_greedy(runner, slots: list[int], prompts: list[list[int]], steps: int) -> list[list[int]]:
    """Prefill each prompt into its slot, then decode `steps` greedy tokens for all rows at once."""
    out = [[int(runner.prefill(s, p, 0)[-1].argmax())] for s, p in zip(slots, prompts)]
    for _ in range(steps):
        logits = runner.decode([o[-1] for o in out], [len(p) + len(o) - 1 for p, o in zip(prompts, out)])
        for o, row in zip(out, logits):
            o.append(int(row.argmax()))
    return out


@needs_llama_cpp
def test_decode_of_three_slots_equals_each_alone_and_move_slot_keeps_the_cache(exports):
    _, store = exports("llama", "f32")
    loaded = open_gguf(store)
    prompts = PROMPTS[:3]
    alone = [run_greedy(loaded.runner_factory(1, 256), [0], [p], 10)[0] for p in prompts]
    runner = loaded.runner_factory(3, 256)
    assert run_greedy(runner, [0, 1, 2], prompts, 10) == alone
    # slot 0 ends; slot 2 moves into its place (what the scheduler does) and keeps decoding from its cache
    runner.move_slot(2, 0, len(prompts[2]) + 10)
    tokens = [alone[2][-1], alone[1][-1]]
    positions = [len(prompts[2]) + 10, len(prompts[1]) + 10]
    expected = [run_greedy(loaded.runner_factory(1, 256), [0], [p], 11)[0][-1] for p in (prompts[2], prompts[1])]
    assert runner.decode(tokens, positions).argmax(-1).tolist() == expected
    runner.close()


def fake_quantized(src: Path, quant: str) -> ModelRunner:
    """The native model with each matrix replaced by its quantize-dequantize round trip (as the export picks types)."""
    model = load_model(src, dtype="float32").model
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                qtype = T.Q8_0 if quant == "q4_0" and name == "lm_head.weight" else T[quant.upper()]
                p.copy_(torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(p.numpy(), qtype), qtype)))
    return ModelRunner(model, max_slots=1, context_length=256)


@needs_llama_cpp
@pytest.mark.parametrize("arch", ARCHS)
def test_quantized_exports_keep_most_greedy_choices(exports, arch: str):
    """f16 and q8_0 keep most top-1 choices of the float model; q4_0 loses many on these tiny random models
    (the native model with the same rounded weights loses as many), so it is checked against that model."""
    src, _ = exports(arch, "f32")
    prompt = [int(t) for t in torch.randint(4, VOCAB, (120,), generator=torch.Generator().manual_seed(0))]
    reference = ModelRunner(load_model(src, dtype="float32").model, max_slots=1, context_length=256)
    for quant, native, floor in [("f16", reference, 0.98), ("bf16", reference, 0.95), ("q8_0", reference, 0.9),
                                 ("q4_0", fake_quantized(src, "q4_0"), 0.9)]:
        want = native.prefill(0, prompt, 0, all_logits=True).argmax(-1)
        runner = open_gguf(exports(arch, quant)[1]).runner_factory(1, 256)
        agree = (runner.prefill(0, prompt, 0, all_logits=True).argmax(-1) == want).float().mean().item()
        assert agree >= floor, f"{quant}: top-1 agreement {agree:.2f}"


@needs_llama_cpp
@pytest.mark.parametrize("rope", [
    {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 64},
    {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
], ids=["llama3", "linear"])
def test_scaled_rope_matches_the_native_runner(tmp_path: Path, rope: dict):
    save_tiny_tokenizer(make_tiny_model("llama", tmp_path / "src", rope_parameters=rope))
    write_gguf(tmp_path / "src", tmp_path / llamacpp.GGUF_FILE, "f32")
    prompt = list(range(4, 120))
    a = open_gguf(tmp_path).runner_factory(1, 256).prefill(0, prompt, 0, all_logits=True)
    native = ModelRunner(load_model(tmp_path / "src").model, max_slots=1, context_length=256)
    b = native.prefill(0, prompt, 0, all_logits=True)
    assert (a - b).abs().max() <= 1e-3 * b.abs().max()


@needs_llama_cpp
def test_long_prefill_is_split_into_batches(exports, monkeypatch: pytest.MonkeyPatch):
    src, store = exports("llama", "f32")
    monkeypatch.setattr(llamacpp, "MIN_BATCH", 16)
    runner = open_gguf(store).runner_factory(1, 256)
    native = ModelRunner(load_model(src, dtype="float32").model, max_slots=1, context_length=256)
    prompt = list(range(4, 204))
    for all_logits in (True, False):
        a, b = runner.prefill(0, prompt, 0, all_logits=all_logits), native.prefill(0, prompt, 0, all_logits=all_logits)
        assert a.shape == b.shape and (a - b).abs().max() <= 1e-3 * b.abs().max()


def test_bf16_source_exports_its_exact_values(tmp_path: Path):
    from safetensors.torch import load_file

    src = save_tiny_tokenizer(make_tiny_model("qwen2", tmp_path / "src", dtype=torch.bfloat16))
    write_gguf(src, tmp_path / "m.gguf", "bf16")
    tensors = {t.name: t for t in gguf.GGUFReader(tmp_path / "m.gguf").tensors}
    got = gguf.quants.dequantize(tensors["blk.0.attn_v.weight"].data, T.BF16)
    want = load_file(src / "model.safetensors")["model.layers.0.self_attn.v_proj.weight"].float().numpy()
    assert tensors["blk.0.attn_v.weight"].tensor_type == T.BF16 and (got == want).all()


@needs_llama_cpp
def test_a_full_shared_kv_pool_fails_the_batch_with_a_clear_error(exports):
    model = llamacpp.GGUFModel(exports("llama", "f32")[1] / llamacpp.GGUF_FILE)
    runner = llamacpp.LlamaCppRunner(model, max_slots=2, context_length=256, threads=2, pool_tokens=256)
    assert runner.cells == 256
    runner.prefill(0, list(range(4, 204)), 0)
    with pytest.raises(TailorError, match="KV cache .*256 tokens.* is full"):
        runner.prefill(1, list(range(4, 204)), 0)
    runner.prefill(0, [5], 0)  # rewriting slot 0 from position 0 frees its cells
    assert runner.prefill(1, list(range(4, 204)), 0).shape == (1, VOCAB)


@needs_llama_cpp
def test_a_missing_file_is_refused(tmp_path: Path):  # adapters: tests/test_runner_contract.py
    with pytest.raises(UnsupportedModelError, match="holds no model.gguf"):
        open_gguf(tmp_path)


# -- the real default model ----------------------------------------------------------------------------
@needs_llama_cpp
@pytest.mark.slow
def test_default_model_q8_0_export_agrees_with_native(default_store_home: Path, tmp_path: Path):
    from transformers import AutoTokenizer

    from tailorlm.config import DEFAULT_MODEL
    from tailorlm.store import ModelStore

    src = ModelStore(default_store_home).path(DEFAULT_MODEL)
    write_gguf(src, tmp_path / llamacpp.GGUF_FILE, "q8_0")  # timed in benchmarks/bench_export.py, not here
    reader = gguf.GGUFReader(tmp_path / llamacpp.GGUF_FILE)
    assert field(reader, "tokenizer.ggml.pre") == "smollm" and "output.weight" not in {t.name for t in reader.tensors}
    tok = AutoTokenizer.from_pretrained(src)
    model = llamacpp.GGUFModel(tmp_path / llamacpp.GGUF_FILE)
    for text in ["What is the capital of France? 12345 apples, in 2024 x 7", "don't   panic!\n\n<|im_end|> ok"]:
        assert llama_tokenize(model, text) == tok.encode(text, add_special_tokens=False)
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True)
               for q in ("What is the capital of France?", "Name three primary colors.")]
    prompts = [list(p["input_ids"]) if hasattr(p, "keys") else list(p) for p in prompts]
    loaded = open_gguf(tmp_path)
    native, ours = Engine(load_model(src, dtype="float32"), max_batch=2), Engine(loaded, max_batch=2)
    try:
        pairs = [(p, native.submit(p, greedy()).tokens(), ours.submit(p, greedy()).tokens()) for p in prompts]
    finally:
        native.shutdown()
        ours.shutdown()
    # q8_0 rounding may flip a near-tie (SmolLM2 puts "The" and "L" 0.08 apart after the first prompt): greedy
    # tokens must agree up to the first divergence, which must be a near-tie of the float model, and llama.cpp,
    # fed the float model's continuation, must pick the same next token at most positions.
    runner = loaded.runner_factory(1, 256)
    for prompt, a, b in pairs:
        first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
        if first is not None:
            reference = ModelRunner(load_model(src, dtype="float32").model, max_slots=1, context_length=256)
            logits = reference.prefill(0, prompt + a[:first], 0)[-1]
            assert logits[a[first]] - logits[b[first]] < 0.5, f"diverged at a clear choice: {a} vs {b}"
        picks = runner.prefill(0, prompt + a, 0, all_logits=True)[len(prompt) - 1 : -1].argmax(-1)
        assert (picks == torch.tensor(a)).float().mean() >= 0.8, (a, picks.tolist())
