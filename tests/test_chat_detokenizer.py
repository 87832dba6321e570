"""IncrementalDetokenizer: streamed pieces join to the full decode and never split a character."""

from __future__ import annotations

import random

import pytest

from tailorlm.chat import IncrementalDetokenizer, TextTokenizer
from tailorlm.chat.detokenizer import MAX_PENDING
from tests.test_chat_tokenizer import SAMPLES, any_tok, bpe_tok, smol_tok, sp_tok  # noqa: F401  (fixtures)

FFFD = "\ufffd"


def stream(tok: TextTokenizer, ids: list[int], **kwargs) -> list[str]:
    """Every delta the detokenizer emits for `ids`, flush included."""
    detok = IncrementalDetokenizer(tok, **kwargs)
    return [detok.push(i) for i in ids] + [detok.flush()]


def check(tok: TextTokenizer, ids: list[int], skip: bool = True) -> None:
    """The stream equals decode(ids), and shows U+FFFD only where the full decode has one."""
    deltas = stream(tok, ids, skip_special_tokens=skip)
    full = tok.decode(ids, skip_special_tokens=skip)
    assert "".join(deltas) == full, ids
    if FFFD not in full:
        assert not any(FFFD in d for d in deltas), (ids, deltas)


@pytest.mark.parametrize("text", SAMPLES)
def test_stream_equals_decode_on_real_text(any_tok: TextTokenizer, text: str) -> None:
    ids = any_tok.encode(text, add_special_tokens=False)
    check(any_tok, ids)
    check(any_tok, ids, skip=False)


def test_multibyte_characters_split_over_tokens_are_emitted_whole(any_tok: TextTokenizer) -> None:
    ids = any_tok.encode("a 🚀 b 日本", add_special_tokens=False)
    # the rocket and the kanji are not in any training text: they are split into byte tokens
    assert any(any_tok.decode([i]) in (FFFD, " " + FFFD) for i in ids)
    deltas = [d for d in stream(any_tok, ids) if d]
    assert not any(FFFD in d for d in deltas)
    assert any("🚀" in d for d in deltas) and "".join(deltas).endswith("日本")


def test_random_token_sequences_bytelevel(bpe_tok: TextTokenizer) -> None:
    rng = random.Random(0)
    for _ in range(300):
        ids = [rng.randrange(bpe_tok.vocab_size) for _ in range(rng.randint(1, 40))]
        check(bpe_tok, ids)
        check(bpe_tok, ids, skip=False)


def test_random_token_sequences_smollm(smol_tok: TextTokenizer) -> None:
    rng = random.Random(1)
    # SmolLM2's byte tokens: ids whose lone decode is an incomplete character
    partial = [i for i in range(smol_tok.vocab_size) if smol_tok.decode([i]).endswith(FFFD)]
    assert len(partial) > 100
    for _ in range(200):
        ids = [rng.choice(partial) if rng.random() < 0.4 else rng.randrange(smol_tok.vocab_size)
               for _ in range(rng.randint(1, 40))]
        check(smol_tok, ids)


def test_random_valid_text_sentencepiece(sp_tok: TextTokenizer) -> None:
    """Byte fallback decodes a run of <0xNN> tokens as one unit, so mix valid runs rather than random ids."""
    rng = random.Random(2)
    pieces = [w for s in SAMPLES for w in s.split(" ")] + ["", " ", "\n"]
    for _ in range(200):
        text = " ".join(rng.choice(pieces) for _ in range(rng.randint(1, 12)))
        ids = sp_tok.encode(text, add_special_tokens=rng.random() < 0.5)
        check(sp_tok, ids)
        check(sp_tok, ids, skip=False)


def test_sentencepiece_word_starts_keep_their_space(sp_tok: TextTokenizer) -> None:
    ids = sp_tok.encode("hello world over the lazy dog", add_special_tokens=False)
    deltas = [d for d in stream(sp_tok, ids) if d]
    assert len(deltas) > 3 and "".join(deltas) == "hello world over the lazy dog"
    assert any(d.startswith(" ") for d in deltas)  # decoding "▁world" alone would drop that space


def test_prompt_ids_give_context_for_the_first_token(any_tok: TextTokenizer) -> None:
    prompt = any_tok.encode("the quick brown", add_special_tokens=False)
    gen = any_tok.encode(" fox jumps 🎉 日本", add_special_tokens=False)
    got = "".join(stream(any_tok, gen, prompt_ids=prompt))
    expected = any_tok.decode(prompt + gen, skip_special_tokens=True)[len(any_tok.decode(prompt)):]
    assert got == expected
    if any_tok.hf.bos_token != "<s>":  # byte-level: context changes nothing
        assert got == any_tok.decode(gen)


def test_prompt_ending_mid_character_is_ignored_as_context(bpe_tok: TextTokenizer) -> None:
    ids = bpe_tok.encode("x 🚀 ok", add_special_tokens=False)
    cut = next(k for k in range(1, len(ids)) if bpe_tok.decode(ids[:k]).endswith(FFFD))
    prompt, gen = ids[:cut], ids[cut:]
    assert "".join(stream(bpe_tok, gen, prompt_ids=prompt)) == bpe_tok.decode(gen)


def test_window_stays_small(smol_tok: TextTokenizer) -> None:
    ids = smol_tok.encode(" ".join(SAMPLES) * 20, add_special_tokens=False)
    detok = IncrementalDetokenizer(smol_tok)
    out = []
    for i in ids:
        out.append(detok.push(i))
        assert len(detok._ids) <= 8  # O(1) per token: the window never grows with the text
    assert "".join(out) + detok.flush() == smol_tok.decode(ids)


def test_invalid_utf8_is_released_after_max_pending(bpe_tok: TextTokenizer) -> None:
    lone = next(i for i in range(bpe_tok.vocab_size) if bpe_tok.decode([i]) == FFFD)
    detok = IncrementalDetokenizer(bpe_tok)
    out = [detok.push(lone) for _ in range(MAX_PENDING + 3)]
    assert any(out)  # not held forever
    assert "".join(out) + detok.flush() == bpe_tok.decode([lone] * (MAX_PENDING + 3))


def test_long_run_of_skipped_special_tokens_keeps_the_window_small(bpe_tok: TextTokenizer) -> None:
    im_end = bpe_tok.hf.convert_tokens_to_ids("<|im_end|>")
    ids = [*bpe_tok.encode("a 🚀", add_special_tokens=False), *[im_end] * 50]
    ids += bpe_tok.encode(" b", add_special_tokens=False)
    detok = IncrementalDetokenizer(bpe_tok)
    out = []
    for i in ids:
        out.append(detok.push(i))
        assert len(detok._ids) <= 2 * MAX_PENDING  # context + pending, each at most MAX_PENDING
    assert "".join(out) + detok.flush() == "a 🚀 b"


def test_special_tokens_are_skipped_or_shown(bpe_tok: TextTokenizer) -> None:
    ids = bpe_tok.hf.encode("hi<|im_end|>", add_special_tokens=False)
    assert "".join(stream(bpe_tok, ids)) == "hi"
    assert "".join(stream(bpe_tok, ids, skip_special_tokens=False)) == "hi<|im_end|>"
    assert stream(bpe_tok, []) == [""]
