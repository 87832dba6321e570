"""Checks of one message of a training line, shared by chat examples and preference pairs (data.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tailorlm.chat.template import ROLES


def kind(value: Any) -> str:
    """What a JSON value is, in words: "an array", "a string", …"""
    return {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean",
            type(None): "null"}.get(type(value), type(value).__name__)


def check_message(m: Any, where: str, errors: list[str]) -> str | None:
    """Check one message (an object with a known role and text content); its role, or None when it has none."""
    if not isinstance(m, dict):
        errors.append(f"{where} is not an object (got {kind(m)})")
        return None
    role = m.get("role")
    if role not in ROLES:
        errors.append(f"{where} has unknown role {role!r}; expected one of {', '.join(ROLES)}")
        return None
    check_content(m, where, errors)
    return role


def check_tools(tools: Any, where: str, errors: list[str]) -> None:
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
        errors.append(f"'{where}' must be an array of tool objects")


def check_content(m: Mapping[str, Any], where: str, errors: list[str]) -> None:
    """Content must be non-empty text (a string or text parts); an assistant with tool_calls may have none."""
    content = m.get("content")
    tool_calls = m.get("tool_calls")
    if tool_calls is not None:
        if m.get("role") != "assistant":
            errors.append(f"{where} has 'tool_calls', which only assistant messages may have")
        elif not isinstance(tool_calls, list) or not tool_calls:
            errors.append(f"{where}.tool_calls must be a non-empty array")
        if content is None:
            return
    if isinstance(content, list):
        texts = [p.get("text") if isinstance(p, dict) and p.get("type") == "text" else None for p in content]
        if any(not isinstance(t, str) for t in texts):
            errors.append(f"{where}.content must be a string or a list of text parts")
            return
        content = "".join(texts)
    if content is None:
        errors.append(f"{where} has no content")
    elif not isinstance(content, str):
        errors.append(f"{where}.content must be a string or a list of text parts (got {kind(content)})")
    elif not content.strip():
        errors.append(f"{where} has empty content")
