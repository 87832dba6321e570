"""ONNX export and the onnxruntime backend: the graph, and logits parity with the native runner on tiny models.

The cases every runner shares (greedy parity with transformers, stops, logprobs, adapters, chunked prefill) are
in tests/test_runner_contract.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from tailorlm.backends.onnxrt import OnnxRunner, load  # noqa: E402
from tailorlm.engine import Engine, SamplingParams, load_model  # noqa: E402
from tailorlm.engine.runner import ModelRunner  # noqa: E402
from tailorlm.errors import InvalidRequestError, UnsupportedModelError  # noqa: E402
from tailorlm.export import onnx as onnx_export  # noqa: E402
from tailorlm.export.onnx import COPIED_FILES, write_onnx  # noqa: E402
from tests.tiny import make_tiny_model, save_tiny_tokenizer  # noqa: E402

CTX = 256
PROMPTS = [[5, 6, 7, 8], [9, 10, 11, 12, 13, 14, 15], list(range(20, 50)), [3]]


def greedy(max_tokens: int = 16) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens)


@pytest.fixture(scope="module", params=["llama", "qwen2", "gpt2"])
def exported(request, tmp_path_factory) -> dict[str, Path]:
    """A tiny model of one architecture with a tokenizer, exported to fp32 and int8."""
    root = tmp_path_factory.mktemp(request.param)
    src = make_tiny_model(request.param, root / "hf")
    save_tiny_tokenizer(src)
    write_onnx(src, root / "f32")
    write_onnx(src, root / "int8", "int8")
    return {"src": src, "f32": root / "f32", "int8": root / "int8"}


@pytest.fixture(scope="module")
def native(exported) -> ModelRunner:
    return ModelRunner(load_model(exported["src"], dtype="float32").model, max_slots=4, context_length=CTX)


def onnx_runner(folder: Path, slots: int = 4) -> OnnxRunner:
    return load(folder, None, None).runner_factory(slots, CTX)


def test_export_writes_graph_with_kv_cache_io(exported):
    import onnxruntime as ort

    out = exported["f32"]
    assert (out / "model.onnx").is_file() and (out / "model.onnx.data").is_file()
    assert not out.with_name("f32.partial").exists()
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    inputs = {i.name: i.shape for i in session.get_inputs()}
    outputs = {o.name: o.shape for o in session.get_outputs()}
    assert list(inputs)[:3] == ["input_ids", "position_ids", "attention_mask"]
    assert len(inputs) == 3 + 2 * 2 and len(outputs) == 1 + 2 * 2  # 2 layers, key and value each
    batch, heads, past, _ = inputs["past_key_values.1.value"]
    assert isinstance(batch, str) and isinstance(past, str) and isinstance(heads, int)
    assert outputs["logits"][-1] == 320 and "present.1.value" in outputs


def test_config_and_tokenizer_files_are_copied_unchanged(exported):
    src = exported["src"]
    assert (src / "chat_template.jinja").is_file() and (src / "tokenizer.json").is_file()
    for out in (exported["f32"], exported["int8"]):
        for name in COPIED_FILES:
            if (src / name).is_file():
                assert (out / name).read_bytes() == (src / name).read_bytes(), name


def test_prefill_logits_equal_native(exported, native):
    runner = onnx_runner(exported["f32"])
    prompt = list(range(30, 70))
    want = native.prefill(0, prompt, 0, all_logits=True)
    got = runner.prefill(0, prompt, 0, all_logits=True)
    assert got.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)  # in chunks: tests/test_runner_contract.py


@pytest.mark.parametrize("quant", ["f32", "int8"])
def test_batched_decode_equals_each_alone(exported, quant):
    prompts = [PROMPTS[0], PROMPTS[2], PROMPTS[1]]  # lengths 4, 30, 7: ragged pasts in one batch
    batched = onnx_runner(exported[quant])
    firsts = [int(batched.prefill(slot, p, 0).argmax()) for slot, p in enumerate(prompts)]
    tokens, positions = list(firsts), [len(p) for p in prompts]
    rows_batched = []
    for _ in range(5):
        logits = batched.decode(tokens, positions)
        rows_batched.append(logits)
        tokens = [int(t) for t in logits.argmax(-1)]
        positions = [p + 1 for p in positions]
    for slot, p in enumerate(prompts):
        alone = onnx_runner(exported[quant], slots=1)
        alone.prefill(0, p, 0)
        token, pos = firsts[slot], len(p)
        for step in range(5):
            logits = alone.decode([token], [pos])
            torch.testing.assert_close(logits[0], rows_batched[step][slot], atol=1e-4, rtol=1e-4)
            token, pos = int(logits.argmax()), pos + 1


def test_move_slot_carries_the_cache(exported, native):
    runner = onnx_runner(exported["f32"])
    runner.prefill(0, PROMPTS[0], 0)
    first = int(runner.prefill(1, PROMPTS[2], 0).argmax())
    runner.move_slot(1, 0, len(PROMPTS[2]))
    got = runner.decode([first], [len(PROMPTS[2])])
    native.prefill(2, PROMPTS[2], 0)
    want = native.decode([0, 0, first], [1, 1, len(PROMPTS[2])])[2:]  # rows 0 and 1 are throwaway
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_int8_keeps_most_top1_agreement(exported, native):
    size = lambda folder: sum(f.stat().st_size for f in folder.iterdir() if f.name.startswith("model.onnx"))
    assert size(exported["int8"]) < size(exported["f32"])
    prompt = list(range(10, 74))
    want = native.prefill(3, prompt, 0, all_logits=True).argmax(-1)
    got = onnx_runner(exported["int8"]).prefill(0, prompt, 0, all_logits=True).argmax(-1)
    assert (got == want).float().mean() >= 0.9


def test_unknown_quantization_is_refused_before_any_work(exported, tmp_path):
    with pytest.raises(InvalidRequestError):
        write_onnx(exported["src"], tmp_path / "out", "q4")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_failed_export_leaves_no_partial_folder(exported, tmp_path, monkeypatch):
    def broken(*_args, **_kw):
        raise RuntimeError("aten::frobnicate has no ONNX lowering\nmore detail")

    monkeypatch.setattr(onnx_export, "_export_dynamo", broken)
    monkeypatch.setattr(onnx_export, "_export_torchscript", broken)
    with pytest.raises(UnsupportedModelError, match="aten::frobnicate has no ONNX lowering") as err:
        write_onnx(exported["src"], tmp_path / "out", progress=lambda _m: None)
    assert "\n" not in err.value.message
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_torchscript_fallback_exports_a_working_graph(exported, native, tmp_path, monkeypatch):
    def broken(*_args, **_kw):
        raise RuntimeError("torch.export rejected the model")

    monkeypatch.setattr(onnx_export, "_export_dynamo", broken)
    said: list[str] = []
    write_onnx(exported["src"], tmp_path / "ts", progress=said.append)
    assert any("TorchScript" in m for m in said)
    runner, prompt = onnx_runner(tmp_path / "ts"), list(range(30, 50))
    torch.testing.assert_close(runner.prefill(0, prompt[:12], 0, all_logits=True),
                               native.prefill(0, prompt[:12], 0, all_logits=True), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(runner.prefill(0, prompt[12:], 12), native.prefill(0, prompt[12:], 12),
                               atol=1e-4, rtol=1e-4)  # with a past, so P was not traced as a constant


def test_not_a_model_folder_is_refused(tmp_path):
    with pytest.raises(UnsupportedModelError, match="config.json"):
        write_onnx(tmp_path, tmp_path / "out")
    with pytest.raises(UnsupportedModelError, match="model.onnx"):
        load(tmp_path, None, None)


def test_sliding_window_model_matches_native(tmp_path):
    """Mistral slides every layer's window: the graph's mask must hide keys older than the window."""
    make_tiny_model("mistral", tmp_path / "hf", max_position_embeddings=CTX, sliding_window=8)
    write_onnx(tmp_path / "hf", tmp_path / "onnx")
    prompt = list(range(30, 60))  # longer than the window
    native = ModelRunner(load_model(tmp_path / "hf", dtype="float32").model, max_slots=2, context_length=CTX)
    runner = onnx_runner(tmp_path / "onnx")
    torch.testing.assert_close(runner.prefill(0, prompt, 0, all_logits=True),
                               native.prefill(0, prompt, 0, all_logits=True), atol=1e-4, rtol=1e-4)
    token = int(native.prefill(1, [5, 6], 0).argmax())
    runner.prefill(1, [5, 6], 0)
    torch.testing.assert_close(runner.decode([token, token], [30, 2]), native.decode([token, token], [30, 2]),
                               atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_default_model_int8_export_agrees_with_native(default_store_home):
    """SmolLM2-135M to int8: greedy tokens match native fp32 wherever native's choice is not a near-tie."""
    from transformers import AutoTokenizer

    from tailorlm.config import DEFAULT_MODEL
    from tailorlm.store import ModelStore

    from tests.fixtures_default import exported_default

    store = ModelStore(default_store_home)
    src = store.path(DEFAULT_MODEL)
    exported = store.path(exported_default(default_store_home, "onnx", "int8"))  # the one test_server serves
    tok = AutoTokenizer.from_pretrained(src)
    prompts = [tok("The history of the Roman Empire spans many centuries. It began when Augustus")["input_ids"],
               tok("def fibonacci(n):\n    if n < 2:\n        return n\n    return")["input_ids"]]
    native = ModelRunner(load_model(src, dtype="float32").model, max_slots=1, context_length=CTX)
    engine = Engine(load(exported, None, None), max_batch=2)
    try:
        handles = [engine.submit(p, greedy(12)) for p in prompts]
        onnx_tokens = [h.tokens() for h in handles]
    finally:
        engine.shutdown()
    for prompt, got in zip(prompts, onnx_tokens):
        # teacher-forced over int8's own output: native's top-1 at each step, and by how much it led
        logits = native.prefill(0, prompt + got, 0, all_logits=True)[len(prompt) - 1 : -1]
        top2 = logits.topk(2, dim=-1).values
        want, clear = logits.argmax(-1).tolist(), (top2[:, 0] - top2[:, 1] > 1.0).tolist()
        assert all(w == g for w, g, c in zip(want, got, clear) if c), (want, got, clear)
        assert sum(w == g for w, g in zip(want, got)) >= 0.75 * len(got), (want, got)
