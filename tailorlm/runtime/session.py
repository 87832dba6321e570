"""A chat over one open model, as the API would run it: history, system prompt, reset; and a preset's
instructions, defaults and knowledge when the model was opened by a preset's name."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from typing import Any

from tailorlm.chat.output import MessageDelta
from tailorlm.config import Settings, get_settings
from tailorlm.engine import SamplingParams
from tailorlm.presets.grounding import Source, ground
from tailorlm.runtime.model import OpenModel
from tailorlm.runtime.textgen import Completion, stream_chat

_SAMPLING = {f.name for f in fields(SamplingParams)}


def preset_params(model: OpenModel, params: SamplingParams, given: set[str]) -> tuple[SamplingParams, list[str]]:
    """`params` with the preset's defaults for what the caller did not give (`given`: SamplingParams fields,
    as the CLI's flags); and the preset's stop strings. Unchanged for a model opened by its own name."""
    if model.preset is None:
        return params, []
    defaults = model.preset.defaults_for(given)
    stops = defaults.pop("stop", None) or []
    if "max_completion_tokens" in defaults:
        defaults["max_tokens"] = defaults.pop("max_completion_tokens")
    return replace(params, **{k: v for k, v in defaults.items() if k in _SAMPLING}), (
        [stops] if isinstance(stops, str) else list(stops))


@dataclass
class ChatSession:
    """What `tailor chat` drives; the answer (even a stopped one) joins the history."""

    model: OpenModel
    params: SamplingParams
    system: str | None = None
    stops: list[str] | None = None
    settings: Settings = field(default_factory=get_settings)
    history: list[dict] = field(default_factory=list)
    sources: list[Source] = field(default_factory=list)  # what the preset retrieved for the last question
    _kbs: Any = None

    def messages(self) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.history

    def reset(self) -> None:
        self.history.clear()
        self.sources = []

    def prompt_messages(self) -> list[dict]:
        """The messages the model is sent: a preset's instructions and sources put in, as the API does."""
        preset = self.model.preset
        if preset is None:
            return self.messages()
        if preset.knowledge and self._kbs is None:
            from tailorlm.kb import KnowledgeBases

            self._kbs = KnowledgeBases(self.settings)
        messages, self.sources = ground(self._kbs, preset, self.messages())
        return messages

    def send(self, text: str, answer: Completion | None = None) -> Iterator[MessageDelta]:
        """Stream the answer to `text`; closing the stream early keeps what was said so far."""
        answer = answer if answer is not None else Completion()
        self.history.append({"role": "user", "content": text})
        content: list[str] = []
        try:
            for delta in stream_chat(self.model, self.prompt_messages(), self.params, self.stops, answer):
                if delta.content:
                    content.append(delta.content)
                yield delta
        finally:
            self.history.append({"role": "assistant", "content": "".join(content)})
