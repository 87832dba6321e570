"""Parsing a model's output into an assistant message: content, reasoning and tool calls.

Every parser consumes what the engine produced, one token at a time (its text delta and id), and
returns message deltas to stream; `finish()` returns the last deltas, after which `message` holds
the whole parsed message. The plain parser passes text through; tool-call and reasoning parsers
(tools.py, harmony.py) follow the same protocol.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class ToolCallDelta:
    """A piece of tool call `index`: the first piece carries id and name, later ones argument text."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str | None = None


@dataclass
class MessageDelta:
    content: str | None = None
    reasoning: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text


@dataclass
class ParsedMessage:
    content: str | None = None
    reasoning: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)


class OutputParser(Protocol):
    message: ParsedMessage

    def feed(self, text: str, token_id: int | None) -> list[MessageDelta]: ...

    def finish(self) -> list[MessageDelta]: ...


class PlainParser:
    """Everything the model says is content."""

    def __init__(self) -> None:
        self.message = ParsedMessage(content="")

    def feed(self, text: str, token_id: int | None) -> list[MessageDelta]:
        if not text:
            return []
        self.message.content += text
        return [MessageDelta(content=text)]

    def finish(self) -> list[MessageDelta]:
        return []
