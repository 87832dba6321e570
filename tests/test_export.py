"""`tailor export`: adapters merged, artifacts registered as models, and the parity gate refusing broken exports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tailorlm.engine import SamplingParams
from tailorlm.errors import AlreadyExistsError, InvalidRequestError
from tailorlm.export import ParityError, export
from tailorlm.runtime import open_model
from tailorlm.store import AdapterStore, ModelStore
from tests.tiny import make_tiny_adapter, make_tiny_model, save_tiny_tokenizer

BASE = "tiny-llama"
FT = "ft:tiny-llama:pip:ftjob-x"
PROMPT = [1, 5, 9, 14, 33, 61]


@pytest.fixture
def tuned(tailor_home: Path, tmp_path: Path) -> str:
    """A tiny llama with a ChatML tokenizer in the store, and a LoRA adapter over it."""
    base = save_tiny_tokenizer(make_tiny_model("llama", tmp_path / "base"))
    ModelStore(tailor_home).import_path(base, name=BASE, show_progress=False)
    adapter = make_tiny_adapter(base, tmp_path / "adapter", seed=3, r=4, lora_alpha=8,
                                target_modules=["q_proj", "v_proj", "down_proj"])
    AdapterStore(tailor_home).add(FT, BASE, adapter)
    return FT


def greedy_tokens(name: str, n: int = 12) -> list[int]:
    model = open_model(name, show_progress=False)
    try:
        return model.submit(PROMPT, SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)).tokens()
    finally:
        model.close()


def test_adapter_merged_into_safetensors_matches_the_source(tuned: str, tailor_home: Path, tmp_path: Path) -> None:
    result = export(tuned, "safetensors", show_progress=False, output=tmp_path / "out")
    m = result.manifest
    assert (m.name, m.format, m.quantization, m.exported_from) == (f"{FT}-f32", "safetensors", "f32", FT)
    assert result.parity.passed and result.parity.top1 == 1.0 and result.parity.kl < 1e-6
    assert result.parity.prompts == 10 and result.parity.positions > 100
    folder = ModelStore(tailor_home).path(m.name)
    assert json.loads((folder / "parity.json").read_text())["passed"] is True
    assert (result.output / "model.safetensors").is_file() and (result.output / "tokenizer.json").is_file()
    assert greedy_tokens(m.name) == greedy_tokens(tuned)  # merged weights generate what base + adapter does
    assert greedy_tokens(m.name) != greedy_tokens(BASE)
    with pytest.raises(AlreadyExistsError):
        export(tuned, "safetensors", show_progress=False)


def test_f16_and_bad_quantizations(tuned: str) -> None:
    result = export(BASE, "safetensors", "f16", show_progress=False)
    assert result.parity.passed and result.parity.top1 >= 0.97
    assert result.manifest.dtype == "f16"
    for fmt, quant in (("safetensors", "q4_0"), ("onnx", "q8_0"), ("gguf", "int8"), ("tflite", None)):
        with pytest.raises(InvalidRequestError):
            export(BASE, fmt, quant, show_progress=False)


def _break_template(folder: Path) -> None:
    config = json.loads((folder / "tokenizer_config.json").read_text())
    if "chat_template" in config:
        config["chat_template"] = config["chat_template"].replace("<|im_start|>", "<|im_begin|>")
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
    template = folder / "chat_template.jinja"
    if template.is_file():
        template.write_text(template.read_text().replace("<|im_start|>", "<|im_begin|>"))


def _corrupt_tensor(folder: Path) -> None:
    path = folder / "model.safetensors"
    tensors = load_file(path)
    name = "model.layers.0.mlp.down_proj.weight"
    tensors[name] = tensors[name] + torch.randn_like(tensors[name]) * tensors[name].abs().max() * 3
    save_file(tensors, path, metadata={"format": "pt"})


@pytest.mark.parametrize(("tamper", "says"), [(_break_template, "chat template"), (_corrupt_tensor, "top-1")])
def test_the_gate_refuses_a_broken_export_and_keeps_nothing(tuned: str, tailor_home: Path, tamper, says) -> None:
    with pytest.raises(ParityError, match=says):
        export(tuned, "safetensors", show_progress=False, _tamper=tamper)
    assert [m.name for m in ModelStore(tailor_home).list()] == [BASE]
    assert not any((tailor_home / "tmp").iterdir()) if (tailor_home / "tmp").exists() else True


def test_cli_export_and_errors(tuned: str, tailor_home: Path) -> None:
    env = {"TAILOR_HOME": str(tailor_home), "PATH": "/usr/bin:/bin", "HOME": str(tailor_home)}
    run = lambda *a: subprocess.run([sys.executable, "-c", "from tailorlm.cli import main; main()", *a], capture_output=True, text=True,  # noqa: E731
                                    env=env, timeout=300)
    ok = run("export", tuned, "--format", "safetensors", "--quant", "f16", "--name", "tiny-merged")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "tiny-merged" and "top-1 agreement" in ok.stderr
    bad = run("export", tuned, "--format", "gguf", "--quant", "int8")
    assert bad.returncode == 1 and bad.stderr.strip().startswith("error:") and len(bad.stderr.strip().splitlines()) == 1
    missing = run("export", "ft:nope:x:y", "--format", "gguf")
    assert missing.returncode == 1 and "Traceback" not in missing.stderr


@pytest.mark.parametrize(("fmt", "quant"), [("gguf", "f16"), ("gguf", "q8_0"), ("onnx", "f32"), ("onnx", "int8")])
def test_tuned_model_round_trips_through_each_backend(tuned: str, tailor_home: Path, fmt: str, quant: str) -> None:
    result = export(tuned, fmt, quant, show_progress=False)
    m = result.manifest
    assert (m.format, m.quantization, m.exported_from) == (fmt, quant, FT) and result.parity.passed
    folder = ModelStore(tailor_home).path(m.name)
    assert (folder / ("model.gguf" if fmt == "gguf" else "model.onnx")).is_file()
    assert not list(folder.glob("*.safetensors"))  # the artifact, not the source's weights
    model = open_model(m.name, show_progress=False)
    try:
        assert model.engine.loaded.backend == {"gguf": "llama.cpp", "onnx": "onnxruntime"}[fmt]
        tokens = model.submit(PROMPT, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)).tokens()
    finally:
        model.close()
    if quant in ("f16", "f32"):  # near-lossless: the same greedy tokens as the source
        assert tokens == greedy_tokens(tuned)
    with pytest.raises(InvalidRequestError, match="already an exported"):
        export(m.name, "safetensors", show_progress=False)


def test_backend_choice_and_a_missing_backend(tuned: str, tailor_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tailorlm.config import Settings
    from tailorlm.errors import BackendMissingError, UnsupportedModelError

    name = export(BASE, "gguf", "f32", show_progress=False).manifest.name
    with pytest.raises(UnsupportedModelError, match="cannot run a gguf artifact"):
        open_model(name, settings=Settings(home=tailor_home, backend="onnxruntime"), show_progress=False)
    with pytest.raises(UnsupportedModelError, match="cannot run a safetensors artifact"):
        open_model(BASE, settings=Settings(home=tailor_home, backend="llama.cpp"), show_progress=False)
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if llama-cpp-python were not installed
    with pytest.raises(BackendMissingError, match=r"pip install 'tailorlm\[llama-cpp\]'"):
        open_model(name, show_progress=False)
