"""Cut generated text at the first stop string, even when it arrives split across tokens."""

from __future__ import annotations

from collections.abc import Sequence

from tailorlm.errors import InvalidRequestError

MAX_STOPS = 16


def validate_stops(stops: str | Sequence[str] | None) -> list[str]:
    """The request's `stop` as a list: None, one string, or up to 16 non-empty strings."""
    if stops is None:
        return []
    if isinstance(stops, str):
        stops = [stops]
    if not isinstance(stops, Sequence):
        raise InvalidRequestError("'stop' must be a string or a list of strings.", param="stop")
    stops = list(stops)
    if len(stops) > MAX_STOPS:
        raise InvalidRequestError(f"'stop' takes at most {MAX_STOPS} strings; got {len(stops)}.", param="stop")
    for i, s in enumerate(stops):
        if not isinstance(s, str) or not s:
            raise InvalidRequestError(f"'stop[{i}]' must be a non-empty string; got {s!r}.", param="stop")
    return list(dict.fromkeys(stops))


class StopStringMatcher:
    """Feeds text deltas through; holds back only a tail that could begin a stop string.

    `push` returns (text safe to emit, stopped). On a stop, the text before it is returned,
    the stop string and anything after it never are, and `matched` names the stop string.
    """

    def __init__(self, stops: str | Sequence[str] | None) -> None:
        self.stops = validate_stops(stops)
        self.matched: str | None = None
        self._held = ""
        self._max_hold = max((len(s) for s in self.stops), default=1) - 1

    @property
    def stopped(self) -> bool:
        """True once a stop string was seen; later pushes return ("", True)."""
        return self.matched is not None

    def push(self, text: str) -> tuple[str, bool]:
        """Add a text delta; return (text now safe to emit, whether a stop string was reached)."""
        if self.stopped:
            return "", True
        if not self.stops:
            return text, False
        buf = self._held + text
        cut = self._find_stop(buf)
        if cut is not None:
            self._held = ""
            return buf[:cut], True
        keep = self._partial_tail(buf)
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        """The held-back tail, at the end of generation (it did not become a stop string)."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _find_stop(self, buf: str) -> int | None:
        """Start of the stop string in `buf` that is completed first, recording which one it is.

        "Completed first" (earliest end, then earliest start) is what reading the text one
        character at a time gives, so the cut never depends on how the text was split into deltas.
        """
        best: tuple[int, int] | None = None
        for s in self.stops:
            i = buf.find(s)
            if i >= 0 and (best is None or (i + len(s), i) < best):
                best, self.matched = (i + len(s), i), s
        return None if best is None else best[1]

    def _partial_tail(self, buf: str) -> int:
        """Length of the longest tail of `buf` that is a proper prefix of some stop string."""
        for n in range(min(self._max_hold, len(buf)), 0, -1):
            tail = buf[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0
