"""Preference pairs, OpenAI's DPO format: one line is a prompt and two answers to it, the better one first.

    {"input": {"messages": [...], "tools": [...]},
     "preferred_output": [{"role": "assistant", "content": "..."}],
     "non_preferred_output": [{"role": "assistant", "content": "..."}]}

As OpenAI does, a pair is one turn: the input ends where the answer starts, and each output is one assistant
message. Each problem names the field it is in (`non_preferred_output is missing`), so that with the line
number a reader finds it at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tailorlm.tune.data_messages import check_content, check_message, check_tools, kind

KEYS = ("input", "preferred_output", "non_preferred_output")
OUTPUTS = ("preferred_output", "non_preferred_output")


def is_preference(data: Mapping[str, Any]) -> bool:
    """A line that means to be a pair: it has any of the pair's fields."""
    return any(k in data for k in KEYS)


def check_preference(data: Mapping[str, Any], errors: list[str]) -> None:
    """Append what is wrong with a preference line; nothing when it is a valid pair."""
    if "messages" in data or "prompt" in data or "completion" in data:
        errors.append("mixed formats: a line has preference fields and 'messages' or 'prompt'/'completion'")
    _check_input(data, errors)
    for key in OUTPUTS:
        _check_output(data, key, errors)
    if not errors and _text(data["preferred_output"][0]) == _text(data["non_preferred_output"][0]):
        errors.append("preferred_output and non_preferred_output are the same answer: the pair prefers nothing")


def _check_input(data: Mapping[str, Any], errors: list[str]) -> None:
    if "input" not in data:
        errors.append("input is missing")
        return
    value = data["input"]
    if not isinstance(value, dict):
        errors.append(f"input must be an object with 'messages' (got {kind(value)})")
        return
    if "messages" not in value:
        errors.append("input.messages is missing")
        return
    messages = value["messages"]
    if not isinstance(messages, list) or not messages:
        errors.append(f"input.messages must be a non-empty array of message objects (got {kind(messages)})"
                      if not isinstance(messages, list) else "input.messages is empty")
        return
    check_tools(value.get("tools"), "input.tools", errors)
    roles = [check_message(m, f"input.messages[{i}]", errors) for i, m in enumerate(messages)]
    if roles[-1] == "assistant":
        errors.append(f"input.messages[{len(messages) - 1}] is an assistant message: the input ends where the "
                      "answer starts (a user or tool message)")


def _check_output(data: Mapping[str, Any], key: str, errors: list[str]) -> None:
    if key not in data:
        errors.append(f"{key} is missing")
        return
    value = data[key]
    if not isinstance(value, list) or len(value) != 1:
        got = f"{len(value)} messages" if isinstance(value, list) else kind(value)
        errors.append(f"{key} must be an array of one assistant message (got {got})")
        return
    m = value[0]
    if not isinstance(m, dict):
        errors.append(f"{key}[0] is not an object (got {kind(m)})")
        return
    if m.get("role") != "assistant":
        errors.append(f"{key}[0].role must be 'assistant' (got {m.get('role')!r})")
        return
    check_content(m, f"{key}[0]", errors)


def _text(m: Mapping[str, Any]) -> Any:
    return (m.get("content"), m.get("tool_calls"))


def pair_messages(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    """One side of a pair as a chat example: the input (its own assistant turns not trained) then the output."""
    history = [{**m, "weight": 0} if m.get("role") == "assistant" else m for m in data["input"]["messages"]]
    example: dict[str, Any] = {"messages": [*history, {**data[key][0], "weight": 1}]}
    if data["input"].get("tools") is not None:
        example["tools"] = data["input"]["tools"]
    return example
