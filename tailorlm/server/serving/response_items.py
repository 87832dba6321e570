"""Responses input → the chat request chat completions runs: items as stored (each with an id), items as chat
messages, and the Responses spelling of tools, tool_choice and text.format as chat's."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from tailorlm.errors import InvalidRequestError

INPUT_ROLES = ("user", "system", "developer", "assistant")
TEXT_PARTS = ("input_text", "output_text", "text")
KEPT = {"reasoning": "rs", "file_search_call": "fs"}  # the model's earlier work (id prefixes): stored, not shown again


def item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _require(item: Mapping[str, Any], key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str):
        raise InvalidRequestError(f"'{where}.{key}' must be a string.", param=f"{where}.{key}")
    return value


def _texts(content: Any, where: str) -> list[str]:
    """The texts of a message's content: a string, or a list of text parts."""
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        raise InvalidRequestError(f"'{where}.content' must be a string or a list of content parts.",
                                  param=f"{where}.content")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind not in TEXT_PARTS or not isinstance(part.get("text"), str):
            raise InvalidRequestError(f"'{where}.content[{j}]' is {kind!r}; only text parts ('input_text') are "
                                      "supported by this server.", param=f"{where}.content[{j}]")
        texts.append(part["text"])
    return texts


def _output_text(output: Any, where: str) -> str:
    if isinstance(output, str):
        return output
    return "\n".join(_texts(output, where))


def stored_item(item: Any, where: str) -> dict[str, Any]:
    """One input item in its stored (ItemResource) shape, with an id; a 400 naming `where` if it is not one we take."""
    if not isinstance(item, Mapping):
        raise InvalidRequestError(f"'{where}' must be an input item object.", param=where)
    kind = item.get("type", "message")
    if kind == "message":
        role = item.get("role")
        if role not in INPUT_ROLES:
            raise InvalidRequestError(f"'{where}.role' is {role!r}; it must be one of {', '.join(INPUT_ROLES)}.",
                                      param=f"{where}.role")
        texts = _texts(item.get("content"), where)
        if role == "assistant":
            return output_message(item.get("id") or item_id("msg"), "".join(texts))
        return {"id": item.get("id") or item_id("msg"), "type": "message", "role": role, "status": "completed",
                "content": [{"type": "input_text", "text": t} for t in texts]}
    if kind == "function_call":
        return {"id": item.get("id") or item_id("fc"), "type": "function_call",
                "call_id": _require(item, "call_id", where), "name": _require(item, "name", where),
                "arguments": _require(item, "arguments", where), "status": "completed"}
    if kind == "function_call_output":
        _output_text(item.get("output"), where)  # text, or a 400 now
        return {"id": item.get("id") or item_id("fco"), "type": "function_call_output",
                "call_id": _require(item, "call_id", where), "output": item.get("output"), "status": "completed"}
    if kind in KEPT:
        return {**item, "id": item.get("id") or item_id(KEPT[kind])}
    raise InvalidRequestError(f"'{where}.type' is {kind!r}; this server takes messages, function_call and "
                              "function_call_output items.", param=f"{where}.type")


def stored_input(value: str | list[Any]) -> list[dict[str, Any]]:
    """A request's `input` as stored items: a string is one user message."""
    items = [{"type": "message", "role": "user", "content": value}] if isinstance(value, str) else value
    return [stored_item(item, f"input[{i}]") for i, item in enumerate(items)]


def output_message(msg_id: str, text: str, annotations: list[dict] | None = None,
                   status: str = "completed") -> dict[str, Any]:
    return {"id": msg_id, "type": "message", "role": "assistant", "status": status,
            "content": [{"type": "output_text", "text": text, "annotations": annotations or [], "logprobs": []}]}


def chat_messages(items: list[dict[str, Any]], instructions: str | None) -> list[dict[str, Any]]:
    """Stored items as chat messages: function calls join the assistant turn before them, outputs are tool turns."""
    messages: list[dict[str, Any]] = [{"role": "developer", "content": instructions}] if instructions else []
    for item in items:
        kind = item["type"]
        if kind == "message":
            text = "\n".join(p["text"] for p in item["content"] if isinstance(p.get("text"), str))
            messages.append({"role": item["role"], "content": text})
        elif kind == "function_call":
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
            if messages and messages[-1]["role"] == "assistant":
                messages[-1].setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item["call_id"],
                             "content": _output_text(item["output"], "input")})
    if not messages:
        raise InvalidRequestError("'input' must contain at least one message.", param="input")
    return messages


# -- tools, tool_choice, text.format ------------------------------------------------------------------------------
def split_tools(tools: list[dict[str, Any]] | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(function tools in chat's shape, file_search tools); any other tool type is a 400."""
    functions, searches = [], []
    for i, tool in enumerate(tools or []):
        kind = tool.get("type")
        if kind == "function":
            fn = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
            functions.append({"type": "function", "function": fn})
        elif kind == "file_search":
            ids = tool.get("vector_store_ids")
            if not isinstance(ids, list) or not ids or not all(isinstance(v, str) for v in ids):
                raise InvalidRequestError(f"'tools[{i}].vector_store_ids' must be a non-empty list of vector store "
                                          "ids.", param=f"tools[{i}].vector_store_ids")
            searches.append(tool)
        else:
            raise InvalidRequestError(f"'tools[{i}].type' is {kind!r}; this server runs 'function' and "
                                      "'file_search' tools.", param=f"tools[{i}].type")
    return functions, searches


def echoed_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The tools as the response object lists them (a function tool always names `parameters` and `strict`)."""
    out = []
    for tool in tools or []:
        if tool.get("type") == "function":
            tool = {**tool, "parameters": tool.get("parameters"), "strict": tool.get("strict")}
        out.append(tool)
    return out


def chat_tool_choice(tool_choice: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    """Responses' tool_choice as chat's: a named function is {"type": "function", "name": ...} here."""
    if tool_choice is None or isinstance(tool_choice, str):
        return tool_choice
    kind = tool_choice.get("type")
    if kind == "function" and isinstance(tool_choice.get("name"), str):
        return {"type": "function", "function": {"name": tool_choice["name"]}}
    if kind == "file_search":  # the search always runs when the tool is given; functions stay optional
        return "auto"
    raise InvalidRequestError("'tool_choice' must be 'auto', 'none', 'required', {\"type\": \"function\", "
                              "\"name\": ...} or {\"type\": \"file_search\"}.", param="tool_choice")


def response_format(text: dict[str, Any] | None) -> dict[str, Any] | None:
    """`text.format` as chat's `response_format` (json_schema's name/schema/strict move under `json_schema`)."""
    fmt = (text or {}).get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, Mapping):
        raise InvalidRequestError("'text.format' must be an object.", param="text.format")
    if fmt.get("type") == "json_schema":
        return {"type": "json_schema", "json_schema": {k: fmt[k] for k in ("name", "schema", "strict", "description")
                                                       if k in fmt}}
    return dict(fmt)
