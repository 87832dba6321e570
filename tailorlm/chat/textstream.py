"""Generated token ids in, user-visible text out: detokenization plus stop strings."""

from __future__ import annotations

from collections.abc import Sequence

from tailorlm.chat.detokenizer import IncrementalDetokenizer
from tailorlm.chat.stop import StopStringMatcher
from tailorlm.chat.tokenizer import TextTokenizer


class TextStream:
    """What the CLI and the server call per generated token; on stopped=True, cancel the request."""

    def __init__(
        self,
        tok: TextTokenizer,
        stops: str | Sequence[str] | None = None,
        skip_special_tokens: bool = True,
        *,
        prompt_ids: Sequence[int] | None = None,
    ) -> None:
        self.detok = IncrementalDetokenizer(tok, prompt_ids, skip_special_tokens)
        self.matcher = StopStringMatcher(stops)
        self.text = ""  # everything emitted so far

    @property
    def stopped(self) -> bool:
        """True once a stop string was reached."""
        return self.matcher.stopped

    @property
    def matched_stop(self) -> str | None:
        """The stop string that ended the text, if any (OpenAI's finish_reason is then "stop")."""
        return self.matcher.matched

    def push(self, token_id: int) -> tuple[str, bool]:
        """Add one generated id; return (text to show now, whether a stop string was reached)."""
        if self.stopped:
            return "", True
        out, stopped = self.matcher.push(self.detok.push(token_id))
        self.text += out
        return out, stopped

    def flush(self) -> str:
        """The remaining text at the end of generation (pending bytes, held-back stop prefix)."""
        if self.stopped:
            return ""
        out, stopped = self.matcher.push(self.detok.flush())
        if not stopped:
            out += self.matcher.flush()
        self.text += out
        return out
