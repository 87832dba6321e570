"""StopStringMatcher: stops found across deltas, cut before, never emitted; no false stops."""

from __future__ import annotations

import random

import pytest

from tailorlm.chat import StopStringMatcher, validate_stops
from tailorlm.errors import InvalidRequestError


def run(stops: list[str], deltas: list[str]) -> tuple[str, bool, list[str]]:
    """Feed `deltas`; return (all emitted text incl. flush, stopped, per-push outputs)."""
    m = StopStringMatcher(stops)
    outs, stopped = [], False
    for d in deltas:
        out, stopped = m.push(d)
        outs.append(out)
        if stopped:
            break
    return "".join(outs) + m.flush(), stopped, outs


def test_stop_spanning_three_deltas_is_cut() -> None:
    text, stopped, outs = run(["</answer>"], ["The answer is 4.</", "ans", "wer>", " more"])
    assert stopped and text == "The answer is 4."
    assert outs == ["The answer is 4.", "", ""]  # only the partial "</" and "ans" were ever held


def test_stop_inside_one_delta_drops_the_rest() -> None:
    text, stopped, _ = run(["###"], ["abc###def"])
    assert (text, stopped) == ("abc", True)


def test_stop_at_the_very_start() -> None:
    m = StopStringMatcher(["\n\n"])
    assert m.push("\n") == ("", False)
    assert m.push("\nhello") == ("", True)
    assert m.matched == "\n\n" and m.push("more") == ("", True) and m.flush() == ""


def test_partial_match_that_diverges_is_released() -> None:
    m = StopStringMatcher(["STOP"])
    assert m.push("a ST") == ("a ", False)
    assert m.push("O") == ("", False)
    assert m.push("P?") == ("", True)
    m = StopStringMatcher(["STOP"])
    assert m.push("a STO") == ("a ", False)
    assert m.push("NE") == ("STONE", False)  # diverged: everything held comes out
    assert m.flush() == "" and not m.stopped


def test_held_tail_is_flushed_at_the_end() -> None:
    text, stopped, outs = run(["<|end|>"], ["hi <|e", "n"])
    assert not stopped and outs == ["hi ", ""] and text == "hi <|en"


def test_holds_only_a_tail_that_can_start_a_stop() -> None:
    m = StopStringMatcher(["abcdef"])
    assert m.push("xyzab") == ("xyz", False)  # "ab" may begin the stop, "xyz" cannot
    assert m.push("x") == ("abx", False)


def test_earliest_stop_wins_and_is_reported() -> None:
    m = StopStringMatcher(["world", "lo w"])
    assert m.push("hello world") == ("hel", True)
    assert m.matched == "lo w"


@pytest.mark.parametrize("deltas", [["abc"], ["ab", "c"], ["a", "b", "c"]])
def test_first_completed_stop_wins_however_the_text_is_split(deltas: list[str]) -> None:
    text, stopped, _ = run(["abc", "b"], deltas)
    assert (text, stopped) == ("a", True)


def test_no_stops_passes_everything_through() -> None:
    m = StopStringMatcher(None)
    assert m.push("abc") == ("abc", False) and m.flush() == ""


def test_overlapping_stop_prefixes() -> None:
    text, stopped, _ = run(["aab"], list("aaaab"))  # the match starts at the third "a"
    assert (text, stopped) == ("aa", True)


def test_random_splits_match_a_char_by_char_scan() -> None:
    rng = random.Random(0)
    alphabet = "ab<>/ \n你🎉"
    for _ in range(2000):
        stops = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 3))]
        full = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        cuts = sorted(rng.sample(range(len(full) + 1), k=min(len(full) + 1, rng.randint(0, 6))))
        deltas = [full[i:j] for i, j in zip([0, *cuts], [*cuts, len(full)])]
        # reading one character at a time, the first stop string to complete wins
        ends = [k for k in range(1, len(full) + 1) if any(full[:k].endswith(s) for s in stops)]
        hits = [ends[0] - len(s) for s in stops if ends and full[: ends[0]].endswith(s)]
        expected = full[: min(hits)] if hits else full
        text, stopped, _ = run(stops, deltas)
        assert (text, stopped) == (expected, bool(hits)), (stops, deltas)


@pytest.mark.parametrize("bad", [[""], ["ok", ""], [str(i) for i in range(17)], [1], 5])
def test_invalid_stops(bad) -> None:
    with pytest.raises(InvalidRequestError) as err:
        StopStringMatcher(bad)
    assert err.value.param == "stop"


def test_validate_stops_forms() -> None:
    assert validate_stops(None) == [] and validate_stops("x") == ["x"]
    assert validate_stops(["a", "b", "a"]) == ["a", "b"]
    assert len(validate_stops([str(i) for i in range(16)])) == 16
