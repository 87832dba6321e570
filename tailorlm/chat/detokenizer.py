"""Turn generated token ids into text one token at a time, never splitting a character."""

from __future__ import annotations

from collections.abc import Sequence

from tailorlm.chat.tokenizer import TextTokenizer

REPLACEMENT = "\ufffd"
# Prompt tokens decoded ahead of the first generated token, as in vLLM/TGI: enough for the
# tokenizer to see that the first generated token follows other text (leading-space rules).
PROMPT_CONTEXT = 5
# Most tokens held back (waiting for a character to complete, or showing nothing) before the
# window slides anyway, so a run of invalid UTF-8 or of skipped special tokens stays O(1).
MAX_PENDING = 16


class IncrementalDetokenizer:
    """Streams text for generated ids; the pieces join to `tok.decode(generated_ids)`.

    Each push decodes only a short window of ids: `window[:read]` was emitted by the previous
    step (context for spacing rules), `window[read:]` is pending. The new text is what
    decoding the window adds to decoding its context, released only once it does not end in
    an incomplete character (U+FFFD from a multi-byte character split over byte tokens).

    With `prompt_ids`, the last few prompt tokens are the first context, so the text is the
    continuation of the prompt (for SentencePiece-style tokenizers a first generated "▁Hi"
    then gives " Hi" rather than the "Hi" of decoding the generated ids alone).

    Known limit (shared with vLLM/TGI): byte-fallback tokenizers decode a run of <0xNN>
    tokens that is invalid UTF-8 as U+FFFD for every byte of the run, even bytes already
    streamed as valid characters; for such garbage the stream and the full decode differ.
    """

    def __init__(
        self, tok: TextTokenizer, prompt_ids: Sequence[int] | None = None, skip_special_tokens: bool = True
    ) -> None:
        self._tok = tok
        self._skip = skip_special_tokens
        self._ids: list[int] = []  # the window: context tokens, then pending ones
        self._read = 0  # window tokens before this index have been emitted
        self._prefix_text = ""  # decode(window[:read]), kept to save one decode per token
        if prompt_ids:
            tail = [int(i) for i in prompt_ids[-PROMPT_CONTEXT:]]
            tail_text = self._decode(tail)
            if not tail_text.endswith(REPLACEMENT):  # a prompt ending mid-character is no usable context
                self._ids, self._read, self._prefix_text = tail, len(tail), tail_text

    def push(self, token_id: int) -> str:
        """Add one generated id; return the text it completes (often "", never half a character)."""
        self._ids.append(int(token_id))
        new_text = self._decode(self._ids)
        waiting = len(new_text) <= len(self._prefix_text) or new_text.endswith(REPLACEMENT)
        if waiting and len(self._ids) - self._read < MAX_PENDING:
            return ""  # nothing visible yet: a skipped special token, or bytes of an unfinished character
        return self._advance(new_text)

    def flush(self) -> str:
        """Emit whatever is still pending at the end of generation (U+FFFD for a truncated character)."""
        if self._read >= len(self._ids):
            return ""
        new_text = self._decode(self._ids)
        return self._advance(new_text) if len(new_text) > len(self._prefix_text) else ""

    def _advance(self, new_text: str) -> str:
        """Emit the window's new text and slide the window: what was pending becomes context."""
        delta = new_text[len(self._prefix_text) :]
        del self._ids[: self._read]  # the old context is never read again
        self._read = len(self._ids)
        self._prefix_text = self._decode(self._ids)
        return delta

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=self._skip)
