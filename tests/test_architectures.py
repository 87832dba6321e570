"""Every architecture of tailorlm/store/architectures.py beyond the Llama family, on a tiny random model: import
into the store, the engine's greedy tokens against transformers' `generate`, LoRA training, the trained adapter
served and merged into a safetensors export; formats an architecture lacks, and unlisted architectures, refused.

Llama, Mistral, Qwen2 and GPT-2 run the same paths in test_engine, test_tune_train, test_export(_gguf/_onnx).
Parity runs in float64 (MoE experts through their eager loop: grouped_mm has no float64 kernel).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tailorlm.chat import load_tokenizer
from tailorlm.engine import Engine, SamplingParams, decoder, load_model
from tailorlm.errors import UnsupportedModelError
from tailorlm.export import export
from tailorlm.store import AdapterStore, ModelStore
from tailorlm.store.architectures import ARCHITECTURES, FORMATS, supported
from tailorlm.store.peft import WEIGHTS_FILE, read_config
from tailorlm.tune.metrics import read_metrics
from tailorlm.tune.packing import encode_example
from tailorlm.tune.trainer import Trainer, TrainSpec
from tests.tiny import _CONFIGS, make_tiny_model, save_tiny_tokenizer

NEW = ("qwen3", "qwen3_moe", "gemma2", "gemma3_text", "phi3", "gpt_oss", "deepseek_v3")
PROMPTS = [[5, 6, 7, 8], list(range(20, 50))]  # the second is longer than the Gemma and gpt-oss windows (8)


def greedy(n: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)


def reference(model: torch.nn.Module, prompt: list[int], n: int) -> list[int]:
    out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=None,
                         pad_token_id=0, attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
    return out[0, len(prompt):].tolist()


def hf64(path: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64, experts_implementation="eager")


def test_every_supported_architecture_has_a_tiny_model_and_a_readme_row() -> None:
    assert set(ARCHITECTURES) <= set(_CONFIGS)
    assert set(NEW) <= set(ARCHITECTURES)
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert [t for t in ARCHITECTURES if f"`{t}`" not in readme] == []


def test_an_unlisted_architecture_is_refused_at_import(tailor_home: Path, tmp_path: Path) -> None:
    src = make_tiny_model("opt", tmp_path / "opt")  # a causal LM transformers runs, not one tailorlm lists
    store = ModelStore(tailor_home)
    with pytest.raises(UnsupportedModelError, match="'opt'") as refused:
        store.import_path(src, show_progress=False)
    assert supported() in str(refused.value) and "gemma3_text" in supported()
    assert store.list() == []


@pytest.fixture(scope="module", params=NEW)
def trained(request, tmp_path_factory) -> tuple[str, Path, Path, Path]:
    """(architecture, base folder, LoRA adapter a short training run wrote, the run's folder)."""
    arch = request.param
    root = tmp_path_factory.mktemp(arch)
    base = save_tiny_tokenizer(make_tiny_model(arch, root / "base"))
    tok = load_tokenizer(base)
    data = [encode_example(tok, {"messages": [{"role": "user", "content": f"Hello {i}?"},
                                              {"role": "assistant", "content": "The capital of France is Paris"}]})
            for i in range(8)]
    spec = TrainSpec(base_path=base, method="lora", epochs=2, batch_size=4, learning_rate=2e-2, seed=3, lora_rank=4)
    outcome = Trainer(spec, data, None, root / "run").run()
    assert outcome.finished
    outcome.model.save_pretrained(root / "adapter")
    return arch, base, root / "adapter", root / "run"


def test_imported_model_generates_what_transformers_does(trained, tailor_home: Path) -> None:
    arch, base = trained[:2]
    manifest = ModelStore(tailor_home).import_path(base, name=arch, show_progress=False)
    assert manifest.model_type == arch and manifest.architecture.endswith("ForCausalLM")
    folder = ModelStore(tailor_home).path(arch)
    loaded = load_model(folder, dtype="float64")
    assert decoder.unsupported(loaded.model, None) == f"architecture {arch}"  # the transformers forward runs it
    engine = Engine(loaded, max_batch=4)
    try:
        want = [reference(hf64(folder), p, 12) for p in PROMPTS]
        assert [engine.submit(p, greedy(12)).tokens() for p in PROMPTS] == want
        batch = [engine.submit(p, greedy(12)) for p in PROMPTS]
        assert [h.tokens() for h in batch] == want
    finally:
        engine.shutdown()


def test_lora_training_lowers_the_loss_on_the_declared_layers(trained) -> None:
    arch, _, adapter, run = trained
    losses = [r["train_loss"] for r in read_metrics(run / "metrics.csv") if r["train_loss"] is not None]
    assert len(losses) == 4 and losses[-1] < losses[0]
    adapted = {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in load_file(adapter / WEIGHTS_FILE)}
    targets = set(ARCHITECTURES[arch].lora_targets)
    assert adapted <= targets and "o_proj" in adapted  # attention at least, MoE experts never (not linear)


def test_trained_adapter_is_served_and_merged_into_safetensors(trained, tailor_home: Path) -> None:
    arch, base, adapter = trained[:3]
    ModelStore(tailor_home).import_path(base, name=arch, show_progress=False)
    ft = f"ft:{arch}:arch:ftjob-1"
    AdapterStore(tailor_home).add(ft, arch, adapter)
    peft = PeftModel.from_pretrained(hf64(base), adapter)
    want = reference(peft, PROMPTS[1], 12)
    with torch.no_grad():  # the adapter changes the model
        ids = torch.tensor([PROMPTS[1]])
        with peft.disable_adapter():
            plain = peft(ids).logits
        assert (peft(ids).logits - plain).abs().max() > 1e-3
    engine = Engine(load_model(base, dtype="float64"), max_batch=2)
    try:
        engine.load_adapter(ft, load_file(adapter / WEIGHTS_FILE), read_config(adapter))
        assert engine.submit(PROMPTS[1], greedy(12), adapter=ft).tokens() == want
    finally:
        engine.shutdown()
    result = export(ft, "safetensors", show_progress=False)
    assert result.parity.passed and result.parity.top1 == 1.0
    merged = hf64(ModelStore(tailor_home).path(result.manifest.name))
    assert reference(merged, PROMPTS[1], 12) == want


@pytest.mark.parametrize("arch", NEW)
def test_formats_an_architecture_lacks_are_refused_up_front(arch: str, tailor_home: Path, tmp_path: Path) -> None:
    ModelStore(tailor_home).import_path(make_tiny_model(arch, tmp_path / arch), name=arch, show_progress=False)
    lacking = [f for f in FORMATS if f not in ARCHITECTURES[arch].formats]
    assert lacking == ["gguf", "onnx"]
    for fmt in lacking:
        with pytest.raises(UnsupportedModelError, match=rf"{fmt} export does not support model type '{arch}'.*llama"):
            export(arch, fmt, show_progress=False)
    assert [m.name for m in ModelStore(tailor_home).list()] == [arch]
