"""A multi-turn chat over one open model: history, system prompt, reset."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from tailorlm.engine import SamplingParams
from tailorlm.runtime.model import OpenModel
from tailorlm.runtime.textgen import Completion, TextDelta, chat_prompt, stream_text


@dataclass
class ChatSession:
    """What `tailor chat` drives; the answer (even a stopped one) joins the history."""

    model: OpenModel
    params: SamplingParams
    system: str | None = None
    history: list[dict] = field(default_factory=list)

    def messages(self) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.history

    def reset(self) -> None:
        self.history.clear()

    def send(self, text: str, answer: Completion | None = None) -> Iterator[TextDelta]:
        """Stream the answer to `text`; closing the stream early keeps what was said so far."""
        answer = answer if answer is not None else Completion()
        self.history.append({"role": "user", "content": text})
        prompt = chat_prompt(self.model, self.messages())
        try:
            yield from stream_text(self.model, prompt, self.params, None, answer)
        finally:
            self.history.append({"role": "assistant", "content": answer.text})
