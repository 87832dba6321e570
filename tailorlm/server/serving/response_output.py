"""A parsed answer (chat's message deltas: content, reasoning, tool calls) → Responses output items, and the
stream events that build them. Streamed and plain responses both run through `OutputBuilder`, so a stream always
assembles to the items the plain response holds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tailorlm.chat.output import MessageDelta
from tailorlm.server.serving.response_items import item_id, output_message

Event = dict[str, Any]


class OutputBuilder:
    """Feed message deltas; each call returns the events (without sequence numbers) to stream. `items` is the
    output so far; `annotate(text)` gives the annotations of a finished message's text."""

    def __init__(self, items: list[dict[str, Any]] | None = None,
                 annotate: Callable[[str], list[dict[str, Any]]] | None = None) -> None:
        self.items: list[dict[str, Any]] = list(items or [])
        self.annotate = annotate
        self._open: dict[str, Any] | None = None  # the item being written (its text in `_text`)
        self._text = ""

    def opening_events(self) -> list[Event]:
        """Events for the items that were complete before generation (a file search)."""
        events: list[Event] = []
        for i, item in enumerate(self.items):
            events.append({"type": "response.output_item.added", "output_index": i,
                           "item": {**item, "status": "in_progress", "results": None}})
            for phase in ("in_progress", "searching", "completed"):
                events.append({"type": f"response.file_search_call.{phase}", "output_index": i, "item_id": item["id"]})
            events.append({"type": "response.output_item.done", "output_index": i, "item": item})
        return events

    @property
    def _index(self) -> int:
        return len(self.items)

    def _start(self, item: dict[str, Any], part: dict[str, Any] | None) -> list[Event]:
        self._open, self._text = item, ""
        events = [{"type": "response.output_item.added", "output_index": self._index, "item": item}]
        if part is not None:
            events.append({"type": "response.content_part.added", "item_id": item["id"],
                           "output_index": self._index, "content_index": 0, "part": part})
        return events

    def _ensure(self, kind: str) -> list[Event]:
        if self._open is not None and self._open["type"] == kind:
            return []
        events = self._close("completed")
        if kind == "message":
            return events + self._start({**output_message(item_id("msg"), ""), "status": "in_progress",
                                         "content": []},
                                        {"type": "output_text", "text": "", "annotations": [], "logprobs": []})
        return events + self._start({"id": item_id("rs"), "type": "reasoning", "summary": [], "content": [],
                                     "status": "in_progress"}, {"type": "reasoning_text", "text": ""})

    def feed(self, d: MessageDelta) -> list[Event]:
        events: list[Event] = []
        if d.reasoning:
            events += self._ensure("reasoning")
            self._text += d.reasoning
            events.append({"type": "response.reasoning_text.delta", "item_id": self._open["id"],
                           "output_index": self._index, "content_index": 0, "delta": d.reasoning})
        if d.content:
            events += self._ensure("message")
            self._text += d.content
            events.append({"type": "response.output_text.delta", "item_id": self._open["id"],
                           "output_index": self._index, "content_index": 0, "delta": d.content, "logprobs": []})
        for call in d.tool_calls or []:
            if call.id is not None:  # a new call: its id and name come first
                events += self._close("completed")
                events += self._start({"id": item_id("fc"), "type": "function_call", "call_id": call.id,
                                       "name": call.name or "", "arguments": "", "status": "in_progress"}, None)
            if call.arguments and self._open is not None and self._open["type"] == "function_call":
                self._text += call.arguments
                events.append({"type": "response.function_call_arguments.delta", "item_id": self._open["id"],
                               "output_index": self._index, "delta": call.arguments})
        return events

    def finish(self, status: str = "completed") -> list[Event]:
        """Close the item being written (`status` "incomplete" when generation was cut short)."""
        return self._close(status)

    def _close(self, status: str) -> list[Event]:
        item, text, i = self._open, self._text, self._index
        if item is None:
            return []
        self._open, self._text = None, ""
        events: list[Event] = []
        where = {"item_id": item["id"], "output_index": i}
        if item["type"] == "message":
            annotations = self.annotate(text) if self.annotate else []
            done = output_message(item["id"], text, annotations, status)
            part = done["content"][0]
            events += [{"type": "response.output_text.annotation.added", **where, "content_index": 0,
                        "annotation_index": n, "annotation": a} for n, a in enumerate(annotations)]
            events += [{"type": "response.output_text.done", **where, "content_index": 0, "text": text, "logprobs": []},
                       {"type": "response.content_part.done", **where, "content_index": 0, "part": part}]
        elif item["type"] == "reasoning":
            part = {"type": "reasoning_text", "text": text}
            done = {**item, "content": [part], "status": status}
            events += [{"type": "response.reasoning_text.done", **where, "content_index": 0, "text": text},
                       {"type": "response.content_part.done", **where, "content_index": 0, "part": part}]
        else:
            done = {**item, "arguments": text, "status": status}
            events.append({"type": "response.function_call_arguments.done", **where, "name": item["name"],
                           "arguments": text})
        events.append({"type": "response.output_item.done", "output_index": i, "item": done})
        self.items.append(done)
        return events
