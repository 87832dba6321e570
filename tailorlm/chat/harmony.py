"""OpenAI's harmony format (gpt-oss): render chat requests, parse channels back into a message.

Rendering builds a harmony Conversation (system: reasoning effort; developer: instructions, tools,
response format; then the history) and lets `openai-harmony` produce the prompt ids. Parsing feeds
generated ids to harmony's StreamableParser: the analysis channel becomes reasoning, final (and
commentary without a recipient) becomes content, a message addressed `to=functions.NAME` a tool call.
"""

from __future__ import annotations

import datetime
import gzip
import importlib.util
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import openai_harmony as oh

from tailorlm.chat.output import MessageDelta, ParsedMessage, ToolCall, ToolCallDelta
from tailorlm.chat.template import normalize_messages
from tailorlm.errors import InvalidRequestError

VOCAB_FILE = "o200k_base.tiktoken"
EFFORTS = {"minimal": oh.ReasoningEffort.LOW, "low": oh.ReasoningEffort.LOW,
           "medium": oh.ReasoningEffort.MEDIUM, "high": oh.ReasoningEffort.HIGH}


def vocab_dir() -> Path:
    """A folder holding o200k_base.tiktoken, unpacked once from the `bpe-openai` wheel (harmony would download it)."""
    preset = os.environ.get("TIKTOKEN_ENCODINGS_BASE")
    if preset and (Path(preset) / VOCAB_FILE).is_file():
        return Path(preset)
    from tailorlm.config import get_settings

    folder = get_settings().home / "cache" / "tiktoken"
    target = folder / VOCAB_FILE
    if not target.is_file():
        spec = importlib.util.find_spec("bpe_openai")
        if spec is None or spec.origin is None:
            raise RuntimeError("gpt-oss needs the o200k_base vocabulary: pip install bpe-openai")
        folder.mkdir(parents=True, exist_ok=True)
        with gzip.open(Path(spec.origin).parent / "data" / f"{VOCAB_FILE}.gz") as src, \
                tempfile.NamedTemporaryFile(dir=folder, delete=False) as tmp:
            shutil.copyfileobj(src, tmp)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp.name, target)  # atomic: a concurrent reader never sees half a file
    return folder


@lru_cache(maxsize=1)
def encoding() -> oh.HarmonyEncoding:
    """The gpt-oss harmony encoding (o200k_harmony), loaded offline."""
    os.environ["TIKTOKEN_ENCODINGS_BASE"] = str(vocab_dir())
    return oh.load_harmony_encoding(oh.HarmonyEncodingName.HARMONY_GPT_OSS)


# -- rendering ---------------------------------------------------------------------------------
def _function_tools(tools: Sequence[Mapping] | None, tool_choice: Any) -> list[oh.ToolDescription]:
    """OpenAI `tools` as harmony function descriptions; `tool_choice` none hides them, a named one keeps only it."""
    if not tools or tool_choice == "none":
        return []
    only = tool_choice.get("function", {}).get("name") if isinstance(tool_choice, Mapping) else None
    out = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, Mapping) else None
        if not isinstance(fn, Mapping) or tool.get("type", "function") != "function" or not fn.get("name"):
            raise InvalidRequestError(f"tools[{i}] must be a function tool with a name.", param=f"tools[{i}]")
        if only is None or fn["name"] == only:
            out.append(oh.ToolDescription.new(fn["name"], fn.get("description") or "", fn.get("parameters")))
    if only is not None and not out:
        raise InvalidRequestError(f"tool_choice names {only!r}, which is not among the tools.", param="tool_choice")
    return out


def _response_format(fmt: Mapping | None) -> str:
    """Harmony asks for structured output in the developer message ("# Response Formats")."""
    if not fmt or fmt.get("type") in (None, "text"):
        return ""
    if fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema") or {}
        head = f"## {spec.get('name') or 'response'}\n\n"
        if spec.get("description"):
            head += f"// {spec['description']}\n"
        return f"# Response Formats\n\n{head}{json.dumps(spec.get('schema') or {}, separators=(',', ':'))}"
    return "# Response Formats\n\nRespond with a single JSON object."


def _assistant(msg: Mapping, where: str, call_names: dict[str, str]) -> list[oh.Message]:
    out = []
    reasoning = msg.get("reasoning_content") or msg.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        out.append(oh.Message.from_role_and_content(oh.Role.ASSISTANT, reasoning).with_channel("analysis"))
    calls = msg.get("tool_calls") or []
    if msg.get("content"):  # a preamble before tool calls goes to commentary, an answer to final
        channel = "commentary" if calls else "final"
        out.append(oh.Message.from_role_and_content(oh.Role.ASSISTANT, msg["content"]).with_channel(channel))
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(fn, Mapping) or not fn.get("name"):
            raise InvalidRequestError(f"'{where}.tool_calls[{j}]' needs a function name.", param=f"{where}.tool_calls")
        call_names[str(call.get("id"))] = fn["name"]
        args = fn.get("arguments")
        args = args if isinstance(args, str) else json.dumps(args or {})
        out.append(oh.Message.from_role_and_content(oh.Role.ASSISTANT, args).with_channel("commentary")
                   .with_recipient(f"functions.{fn['name']}").with_content_type("<|constrain|>json"))
    return out


def render(messages: Sequence[Mapping], tools: Sequence[Mapping] | None = None, tool_choice: Any = None,
           reasoning_effort: str | None = None, response_format: Mapping | None = None,
           today: str | None = None) -> list[int]:
    """Prompt ids for the assistant's next turn, in harmony."""
    msgs = normalize_messages(messages)
    system = (oh.SystemContent.new().with_reasoning_effort(EFFORTS[reasoning_effort or "medium"])
              .with_conversation_start_date(today or datetime.date.today().isoformat()))
    instructions = [m["content"] for m in msgs if m["role"] in ("system", "developer") and m["content"]]
    if fmt := _response_format(response_format):
        instructions.append(fmt)
    functions = _function_tools(tools, tool_choice)
    conv = [oh.Message.from_role_and_content(oh.Role.SYSTEM, system)]
    if instructions or functions:
        dev = oh.DeveloperContent.new()
        if instructions:
            dev = dev.with_instructions("\n\n".join(instructions))
        if functions:
            dev = dev.with_function_tools(functions)
        conv.append(oh.Message.from_role_and_content(oh.Role.DEVELOPER, dev))
    call_names: dict[str, str] = {}
    for i, m in enumerate(msgs):
        role, where = m["role"], f"messages[{i}]"
        if role == "user":
            conv.append(oh.Message.from_role_and_content(oh.Role.USER, m["content"]))
        elif role == "assistant":
            conv.extend(_assistant(m, where, call_names))
        elif role == "tool":
            name = call_names.get(str(m.get("tool_call_id"))) or m.get("name")
            if not name:
                raise InvalidRequestError(f"'{where}.tool_call_id' matches no earlier assistant tool call.",
                                          param=f"{where}.tool_call_id")
            author = oh.Author.new(oh.Role.TOOL, f"functions.{name}")
            conv.append(oh.Message.from_author_and_content(author, m["content"])
                        .with_channel("commentary").with_recipient("assistant"))
    return encoding().render_conversation_for_completion(oh.Conversation.from_messages(conv), oh.Role.ASSISTANT)


# -- parsing -----------------------------------------------------------------------------------
class HarmonyParser:
    """Generated ids → reasoning, content and tool-call deltas (OutputParser protocol; text is ignored).

    Output that breaks the format (a model that does not speak harmony, random weights) is not an
    error: from the first token harmony rejects, the raw decoded text becomes content.
    """

    def __init__(self) -> None:
        self.enc = encoding()
        self.parser = oh.StreamableParser(self.enc, oh.Role.ASSISTANT)
        self.message = ParsedMessage(content="")
        self.in_content = False
        self.call: int | None = None  # index of the tool call being written
        self.header: list[int] = []  # ids since the last message body (its header, so far)
        self.plain: list[int] | None = None  # raw mode: ids not yet decoded
        self.emitted = False

    def feed(self, text: str, token_id: int | None) -> list[MessageDelta]:
        if token_id is None:
            return []
        if self.plain is not None:
            return self._raw([token_id])
        try:
            self.parser.process(token_id)
        except oh.HarmonyError:
            return self._raw(self.header + [token_id])
        entered = self.parser.state == oh.StreamState.CONTENT
        out: list[MessageDelta] = []
        if entered and not self.in_content:
            self.header = []
            recipient = self.parser.current_recipient
            if recipient and recipient != "assistant":
                out.append(self._open_call(recipient.removeprefix("functions.")))
        elif not entered:
            self.header.append(token_id)
            self.call = None
        self.in_content = entered
        delta = self.parser.last_content_delta
        if entered and delta:
            out.append(self._route(delta))
        return out

    def finish(self) -> list[MessageDelta]:
        if self.plain is not None:
            return self._raw([], final=True)
        # Nothing parsed and no harmony marker seen: the model did not speak harmony, so its text is
        # the content. A header cut short (max_tokens) is dropped, as OpenAI's reasoning models do.
        if self.header and not self.emitted and not any(map(self.enc.is_special_token, self.header)):
            return self._raw(self.header, final=True)
        return []

    def _open_call(self, name: str) -> MessageDelta:
        self.call = len(self.message.tool_calls)
        call = ToolCall(id=f"call_{uuid.uuid4().hex[:24]}", name=name, arguments="")
        self.message.tool_calls.append(call)
        self.emitted = True
        return MessageDelta(tool_calls=[ToolCallDelta(self.call, id=call.id, name=name, arguments="")])

    def _route(self, delta: str) -> MessageDelta:
        self.emitted = True
        if self.call is not None:
            self.message.tool_calls[self.call].arguments += delta
            return MessageDelta(tool_calls=[ToolCallDelta(self.call, arguments=delta)])
        if self.parser.current_channel == "analysis":
            self.message.reasoning = (self.message.reasoning or "") + delta
            return MessageDelta(reasoning=delta)
        return self._content(delta)

    def _content(self, text: str) -> MessageDelta:
        self.message.content += text
        self.emitted = True
        return MessageDelta(content=text)

    def _raw(self, ids: list[int], final: bool = False) -> list[MessageDelta]:
        """Raw mode: decode ids as plain content, holding back a character split across tokens."""
        self.plain = (self.plain or []) + ids
        text = self.enc.decode(self.plain)
        if not text or (text.endswith("\ufffd") and len(self.plain) < 4 and not final):
            return []
        self.plain = []
        return [self._content(text)]


def plan(tokenizer: Any, messages: Sequence[Mapping], tools: Sequence[Mapping] | None, tool_choice: Any,
         reasoning_effort: str | None, response_format: Mapping | None) -> dict[str, Any]:
    """The chat plan for a gpt-oss model (tailorlm/chat/plan.py `ChatPlan`)."""
    return dict(
        prompt=render(messages, tools, tool_choice, reasoning_effort, response_format),
        parser=HarmonyParser,
        constraint=call_constraint(tokenizer, tools, tool_choice),
        stop_token_ids=sorted(encoding().stop_tokens_for_assistant_actions()),  # <|return|>, <|call|>
    )


def call_constraint(tokenizer: Any, tools: Sequence[Mapping] | None, tool_choice: Any) -> Callable[[], Any]:
    """With `tool_choice` "required" or a named function, a grammar that makes the turn such a call (reasoning
    first allowed); otherwise none: harmony output mixes channels, and `response_format` binds no channel yet."""
    if not tools or tool_choice in (None, "auto", "none"):
        return lambda: None
    from tailorlm.chat import structured
    from tailorlm.chat.tools import resolve_choice, validate_tools

    specs = validate_tools(list(tools))
    choice = resolve_choice(tool_choice, specs)
    if choice in ("auto", "none"):
        return lambda: None
    functions = [s["function"] for s in specs if choice == "required" or s["function"]["name"] == choice]
    param = "tools" if choice == "required" else "tool_choice"
    return structured.grammar_constraint(tokenizer, structured.harmony_call_grammar(functions), param=param)
