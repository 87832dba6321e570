"""TextStream: token ids in, visible text out, cut at stop strings that span several tokens."""

from __future__ import annotations

import random

import pytest

from tailorlm.chat import TextStream, TextTokenizer
from tests.test_chat_tokenizer import SAMPLES, any_tok, bpe_tok, smol_tok, sp_tok  # noqa: F401  (fixtures)


def run(tok: TextTokenizer, ids: list[int], stops: list[str] | None) -> tuple[list[str], bool, int]:
    """Push ids until stopped; return (deltas incl. flush, stopped, tokens consumed)."""
    ts = TextStream(tok, stops)
    deltas, n = [], 0
    for i in ids:
        n += 1
        out, stopped = ts.push(i)
        deltas.append(out)
        if stopped:
            return deltas, True, n
    deltas.append(ts.flush())
    assert "".join(deltas) == ts.text
    return deltas, False, n


def test_stop_spanning_several_tokens(any_tok: TextTokenizer) -> None:
    ids = any_tok.encode("The answer is 42.</answer> and then more", add_special_tokens=False)
    stop_ids = any_tok.encode("</answer>", add_special_tokens=False)
    assert len(stop_ids) >= 2
    deltas, stopped, n = run(any_tok, ids, ["</answer>"])
    assert stopped and "".join(deltas) == "The answer is 42."
    assert any_tok.decode(ids[:n]).endswith("</answer>")  # stopped on the token completing the stop


def test_stop_made_of_a_character_split_over_byte_tokens(any_tok: TextTokenizer) -> None:
    ids = any_tok.encode("go 🚀 now", add_special_tokens=False)
    deltas, stopped, _ = run(any_tok, ids, ["🚀"])
    assert stopped and "".join(deltas) == "go " and not any("\ufffd" in d for d in deltas)


def test_stop_at_the_very_start(bpe_tok: TextTokenizer) -> None:
    ids = bpe_tok.encode("\n\nhello world", add_special_tokens=False)
    deltas, stopped, _ = run(bpe_tok, ids, ["\n\n"])
    assert stopped and "".join(deltas) == ""


def test_partial_match_that_diverges_is_released(any_tok: TextTokenizer) -> None:
    text = "a ## b #! c ###"
    ids = any_tok.encode(text, add_special_tokens=False)
    deltas, stopped, _ = run(any_tok, ids[:-1], ["###"])  # the full "###" never arrives
    assert not stopped and "".join(deltas) == any_tok.decode(ids[:-1])
    deltas, stopped, _ = run(any_tok, ids, ["###"])
    assert stopped and "".join(deltas) == "a ## b #! c "


def test_without_stops_the_text_is_the_decode(any_tok: TextTokenizer) -> None:
    ids = any_tok.encode(" ".join(SAMPLES), add_special_tokens=False)
    deltas, stopped, _ = run(any_tok, ids, None)
    assert not stopped and "".join(deltas) == any_tok.decode(ids)


def test_eos_is_invisible_and_pushes_after_a_stop_are_ignored(smol_tok: TextTokenizer) -> None:
    ids = smol_tok.encode("Paris.\nUser: next", add_special_tokens=False)
    ts = TextStream(smol_tok, ["\nUser:"])
    outs = [ts.push(i) for i in ids]
    assert ts.stopped and ts.matched_stop == "\nUser:" and ts.text == "Paris."
    assert outs[-1] == ("", True) and ts.push(smol_tok.eos_token_ids[0]) == ("", True) and ts.flush() == ""
    plain = TextStream(smol_tok)
    assert plain.push(smol_tok.eos_token_ids[0]) == ("", False)


def test_random_text_and_stops(bpe_tok: TextTokenizer, sp_tok: TextTokenizer) -> None:
    rng = random.Random(3)
    words = [w for s in SAMPLES for w in s.split()] + ["</s>", "###", "\n"]
    for tok in (bpe_tok, sp_tok):
        for _ in range(150):
            ids = tok.encode(" ".join(rng.choice(words) for _ in range(rng.randint(1, 15))), add_special_tokens=False)
            full = tok.decode(ids, skip_special_tokens=True)
            stops = [full[a: a + rng.randint(1, 4)] for a in rng.sample(range(len(full)), k=min(2, len(full)))]
            stops = [s for s in stops if s] or None
            deltas, stopped, _ = run(tok, ids, stops)
            ends = [k for k in range(1, len(full) + 1) if any(full[:k].endswith(s) for s in stops or [])]
            expected = full[: min(ends[0] - len(s) for s in stops if full[: ends[0]].endswith(s))] if ends else full
            assert (stopped, "".join(deltas)) == (bool(ends), expected), (full, stops)


@pytest.mark.parametrize("skip", [True, False])
def test_special_tokens_and_stops(bpe_tok: TextTokenizer, skip: bool) -> None:
    ids = bpe_tok.hf.encode("hi<|im_end|>there", add_special_tokens=False)
    ts = TextStream(bpe_tok, ["<|im_end|>"], skip_special_tokens=skip)
    for i in ids:
        ts.push(i)
    ts.flush()
    assert ts.text == ("hithere" if skip else "hi") and ts.stopped is not skip
