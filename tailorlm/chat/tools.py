"""Tool calling: tools in the prompt, `tool_choice` as a grammar, tool calls parsed out of the output.

The model's own chat template renders `tools` when it knows how; otherwise (ChatML templates such
as SmolLM2's) a system message describes them in the Hermes/Qwen convention, which the parser
reads back: `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`. The parser also takes
Llama-3.1 bare JSON calls and Mistral's `[TOOL_CALLS][...]`.
"""

from __future__ import annotations

import json
import re
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jsonschema

from tailorlm.chat import structured
from tailorlm.chat.callscan import CallScanner
from tailorlm.chat.output import MessageDelta, ParsedMessage, PlainParser, ToolCall, ToolCallDelta
from tailorlm.chat.template import normalize_messages, render_chat, render_chat_text
from tailorlm.chat.tokenizer import TextTokenizer
from tailorlm.errors import InvalidRequestError

OPEN, CLOSE, MISTRAL = "<tool_call>", "</tool_call>", "[TOOL_CALLS]"
SYSTEM_PROMPT = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)
_PROBE_TOOL = {"type": "function", "function": {"name": "probe_tool_zq", "description": "probe",
                                                   "parameters": {"type": "object", "properties": {}}}}
_supports: "weakref.WeakKeyDictionary[TextTokenizer, bool]" = weakref.WeakKeyDictionary()


def plan(tok: TextTokenizer, messages: Sequence[Mapping[str, Any]], tools: list[dict] | None,
         tool_choice: str | dict | None, parallel_tool_calls: bool | None = None,
         answer: dict[str, Any] | None = None) -> dict[str, Any]:
    """Prompt ids, per-choice parser and constraint factories for a request with `tools`.

    "required" constrains the output to one or more calls (exactly one with `parallel_tool_calls`
    false); a named function to exactly one call of it. `answer`, the JSON schema of a response format:
    under "auto" the output is calls or that JSON (an agent with an output type still calls its tools); a
    required or named call leaves it out, as no answer is written then.
    """
    specs = validate_tools(tools)
    choice = resolve_choice(tool_choice, specs)
    prompt = render_with_tools(tok, messages, specs)
    constraint: Callable[[], Any] = lambda: None
    if choice == "required" or (choice == "auto" and answer is not None):
        if choice == "auto":
            structured.json_schema_constraint(tok, answer)  # a schema that does not compile: the format's 400
        grammar = call_grammar(specs, many=parallel_tool_calls is not False, answer=answer if choice == "auto" else None)
        constraint = structured.grammar_constraint(tok, grammar, param="tools")
    elif choice not in ("auto", "none"):
        grammar = call_grammar([s for s in specs if s["function"]["name"] == choice], many=False)
        constraint = structured.grammar_constraint(tok, grammar, param="tool_choice")
    names = {s["function"]["name"] for s in specs}
    marker = getattr(tok.hf, "added_tokens_encoder", {}).get(MISTRAL)  # a special token, skipped in text
    markers = {marker: MISTRAL} if marker is not None else {}
    parser = PlainParser if choice == "none" else (lambda: ToolCallParser(names, markers))
    return dict(prompt=prompt, parser=parser, constraint=constraint, stop_token_ids=[])


def validate_tools(tools: Any) -> list[dict[str, Any]]:
    """OpenAI function tools, checked, with `parameters` defaulted to an empty object schema."""
    if not isinstance(tools, list) or not tools:
        raise InvalidRequestError("'tools' must be a non-empty list of function tools.", param="tools")
    specs, seen = [], set()
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, Mapping) else None
        name = fn.get("name") if isinstance(fn, Mapping) else None
        if not isinstance(name, str) or tool.get("type", "function") != "function" or \
                not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", name):
            raise InvalidRequestError(
                f"'tools[{i}]' must be {{\"type\": \"function\", \"function\": {{\"name\": ...}}}} with a name of "
                "letters, digits, '_', '.' or '-' (at most 64).", param="tools")
        if name in seen:
            raise InvalidRequestError(f"'tools' names function {name!r} twice.", param="tools")
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        try:
            jsonschema.Draft202012Validator.check_schema(params)
        except jsonschema.SchemaError as exc:
            raise InvalidRequestError(f"'tools[{i}].function.parameters' is not a valid JSON schema: "
                                      f"{exc.message}", param="tools") from exc
        seen.add(name)
        specs.append({"type": "function", "function": {**fn, "parameters": params}})
    return specs


def resolve_choice(tool_choice: Any, specs: list[dict[str, Any]]) -> str:
    """"auto", "none", "required", or the name of the one function to call."""
    if tool_choice is None:
        return "auto"
    if isinstance(tool_choice, str):
        if tool_choice in ("auto", "none", "required"):
            return tool_choice
        raise InvalidRequestError(f"'tool_choice' is {tool_choice!r}; it must be 'auto', 'none', 'required' "
                                  "or a function.", param="tool_choice")
    fn = tool_choice.get("function") if isinstance(tool_choice, Mapping) else None
    name = fn.get("name") if isinstance(fn, Mapping) else None
    if not isinstance(name, str):
        raise InvalidRequestError("'tool_choice' must name a function: "
                                  '{"type": "function", "function": {"name": ...}}.', param="tool_choice")
    if name not in {s["function"]["name"] for s in specs}:
        raise InvalidRequestError(f"'tool_choice' names function {name!r}, which is not in 'tools'.",
                                  param="tool_choice")
    return name


def supports_tools(tok: TextTokenizer) -> bool:
    """Whether the model's template renders `tools` (it changes the prompt), checked once per tokenizer."""
    if tok not in _supports:
        probe = [{"role": "user", "content": "hi"}]
        try:
            _supports[tok] = render_chat_text(tok, probe, tools=[_PROBE_TOOL]) != render_chat_text(tok, probe)
        except InvalidRequestError:
            _supports[tok] = False
    return _supports[tok]


def render_with_tools(tok: TextTokenizer, messages: Sequence[Mapping[str, Any]], specs: list[dict]) -> list[int]:
    """Prompt ids: the template's own tool rendering, or the Hermes convention spelled out in text."""
    msgs = normalize_messages(messages)
    if supports_tools(tok):
        return render_chat(tok, [_with_dict_arguments(m) for m in msgs], tools=specs)
    return render_chat(tok, as_text_messages(msgs, specs))


def as_text_messages(msgs: list[dict[str, Any]], specs: list[dict]) -> list[dict[str, Any]]:
    """For templates without tools: tools in a system message, calls and results as tagged text."""
    tools_text = SYSTEM_PROMPT.format(tools="\n".join(json.dumps(s, ensure_ascii=False) for s in specs))
    out: list[dict[str, Any]] = []
    for m in msgs:
        role, content = m["role"], m.get("content") or ""
        if role == "assistant" and m.get("tool_calls"):
            calls = [_call_text(c) for c in m["tool_calls"]]
            out.append({"role": "assistant", "content": "\n".join(([content] if content else []) + calls)})
        elif role == "tool":
            text = f"<tool_response>\n{content}\n</tool_response>"
            if out and out[-1].get("_tool"):
                out[-1]["content"] += "\n" + text
            else:
                out.append({"role": "user", "content": text, "_tool": True})
        else:
            out.append({"role": role, "content": content})
    if out and out[0]["role"] in ("system", "developer"):
        out[0]["content"] = f"{out[0]['content']}\n\n{tools_text}" if out[0]["content"] else tools_text
    else:
        out.insert(0, {"role": "system", "content": tools_text})
    return [{k: v for k, v in m.items() if k != "_tool"} for m in out]


def _arguments(value: Any) -> Any:
    """Arguments as an object (OpenAI sends a JSON string; templates want a mapping)."""
    parsed = _loads(value) if isinstance(value, str) else value
    return parsed if parsed is not None else (value or {})


def _call_text(call: Mapping[str, Any]) -> str:
    fn = call.get("function", call)
    body = {"name": fn.get("name"), "arguments": _arguments(fn.get("arguments"))}
    return f"{OPEN}\n{json.dumps(body, ensure_ascii=False)}\n{CLOSE}"


def _with_dict_arguments(m: dict[str, Any]) -> dict[str, Any]:
    if not m.get("tool_calls"):
        return m
    calls = [{**c, "function": {**c["function"], "arguments": _arguments(c["function"].get("arguments"))}}
             if isinstance(c.get("function"), Mapping) else c for c in m["tool_calls"]]
    return {**m, "tool_calls": calls}


def call_grammar(specs: list[dict[str, Any]], *, many: bool, answer: dict[str, Any] | None = None) -> str:
    """Lark grammar of one (with `many`, one or more) `<tool_call>` blocks calling a tool of `specs` (or, with
    `answer`, else a JSON value matching that schema)."""
    return structured.tool_call_grammar([s["function"] for s in specs], many=many, open_tag=OPEN, close_tag=CLOSE,
                                        answer=answer)


class ToolCallParser:
    """Content until a call opens; each well-formed call becomes a ToolCall, anything else stays content.

    A Hermes (`<tool_call>`) or bare JSON call is read by a CallScanner as it arrives: once its name is
    known and its arguments object has opened, the call opens (a delta with id and name) and the raw
    text of the arguments streams as it is decoded; the message's arguments are exactly that text. Text
    that never reaches that point (not JSON, no name, arguments that are not an object) is held until
    the call closes and judged whole, so it can still be given back as text. Only a possible prefix of
    an opening tag is held back from content, plus trailing whitespace (dropped when a call follows).
    """

    def __init__(self, names: set[str] | frozenset[str] = frozenset(), markers: dict[int, str] | None = None):
        self.message = ParsedMessage(content="")
        self.names = names  # bare JSON (Llama 3.1 style) counts as a call only when it names a tool
        self.markers = markers or {}  # special token ids (skipped in text) that open calls
        self._buf, self._ws, self._mode = "", "", "start"
        self._scan = CallScanner()
        self._sent: int | None = None  # while a scanned call is open: how much of its arguments text went out

    def feed(self, text: str, token_id: int | None) -> list[MessageDelta]:
        if not text and token_id in self.markers:
            text = self.markers[token_id]
        self._buf += text
        return self._run(final=False)

    def finish(self) -> list[MessageDelta]:
        out = self._run(final=True)
        if self._ws and not self.message.tool_calls:
            self.message.content += self._ws
            out.append(MessageDelta(content=self._ws))
        self._ws = ""
        return out

    def _run(self, final: bool) -> list[MessageDelta]:
        out: list[MessageDelta] = []
        while True:
            buf = self._buf
            if self._mode == "start":  # a bare JSON call (Llama 3.1) may open the output
                s = buf.lstrip()
                squeezed = re.sub(r"\s+", "", s)
                if not final and (not s or (len(squeezed) < 8 and '{"name":'.startswith(squeezed))):
                    return out  # too early to tell
                if re.match(r'\{\s*"name"\s*:', s):
                    self._buf, self._mode, self._scan = s, "bare", CallScanner()
                else:
                    self._mode = "content"
            elif self._mode == "content":
                hits = [(buf.find(o), o) for o in (OPEN, MISTRAL) if o in buf]
                if not hits:
                    keep = 0 if final else _partial_suffix(buf)
                    out += self._content(buf[: len(buf) - keep])
                    self._buf = buf[len(buf) - keep:]
                    return out
                at, opener = min(hits)
                out += self._content(buf[:at])
                self._ws, self._buf = "", buf[at + len(opener):]
                self._mode, self._scan = ("tag", CallScanner()) if opener == OPEN else ("list", self._scan)
            elif self._mode in ("tag", "bare"):
                sc = self._scan
                sc.feed(buf)
                self._buf = ""
                out += self._stream_call()
                if not sc.done and not final and not (self._mode == "bare" and self._sent is None and
                                                      sc.name is not None and sc.name not in self.names):
                    return out
                out += self._end_scanned(final)
            elif self._mode == "tail":  # after a scanned call: its closing tag
                s = buf.lstrip()
                if s.startswith(CLOSE):
                    self._buf, self._mode = s[len(CLOSE):], "content"
                elif CLOSE.startswith(s) and not final:
                    return out
                else:  # no closing tag: what follows is content again
                    self._buf, self._mode = s, "content"
            elif self._mode == "held":  # a call tag whose text is judged once it closes
                end = buf.find(CLOSE)
                if end < 0 and not final:
                    return out
                body, rest = (buf[:end], buf[end + len(CLOSE):]) if end >= 0 else (buf, "")
                call = _as_call(_loads(body))
                if call:
                    out += self._call(call)
                else:
                    out += self._content(OPEN + body + (CLOSE if end >= 0 else ""))
                self._buf, self._mode = rest, "content"
            else:  # "list": Mistral's [TOOL_CALLS] followed by a JSON list of calls
                decoded = _decode(buf.lstrip(), final)
                if decoded is None:
                    return out
                value = decoded[0] if decoded else None
                calls = [_as_call(v) for v in (value if isinstance(value, list) else [value])]
                if decoded and calls and all(calls):
                    for c in calls:
                        out += self._call(c)
                    self._buf = buf.lstrip()[decoded[1]:]
                else:
                    out += self._content(MISTRAL + buf)
                    self._buf = ""
                self._mode = "content"

    def _stream_call(self) -> list[MessageDelta]:
        """Open the scanned call once its name and arguments object are known; then stream new argument text."""
        sc, out = self._scan, []
        if self._sent is None:
            if sc.name is None or sc.args_start is None or not sc.name or \
                    (self._mode == "bare" and sc.name not in self.names):
                return out
            out.append(self._open(sc.name))
            self._sent = sc.args_start
        known = sc.args_known
        if known is not None and known > self._sent:
            out.append(self._arguments(sc.text[self._sent:known]))
            self._sent = known
        return out

    def _end_scanned(self, final: bool) -> list[MessageDelta]:
        """The scanned call ended, broke off, or the output did: go on after it, or judge its text whole."""
        sc, out, opened = self._scan, [], self._sent is not None
        self._sent = None
        rest = sc.text[sc.end if sc.end is not None else sc.pos:]
        if opened:
            self._buf, self._mode = (rest, "tail") if self._mode == "tag" else (rest.lstrip().lstrip(";"), "start")
        elif self._mode == "tag":  # never opened: the old way, the whole tag at once
            self._buf, self._mode = sc.text, "held"
        else:
            call = _as_call(_loads(sc.text[:sc.end])) if sc.end is not None else None
            if call and call["name"] in self.names:
                out += self._call(call)
                self._buf, self._mode = rest.lstrip().lstrip(";"), "start"
            else:
                self._buf, self._mode = sc.text, "content"
        if final and self._mode == "start":
            self._mode = "content"  # nothing more will come: what is left is content
        return out

    def _content(self, text: str) -> list[MessageDelta]:
        text = self._ws + text
        body = text.rstrip()
        self._ws = text[len(body):]
        if not body:
            return []
        self.message.content += body
        return [MessageDelta(content=body)]

    def _open(self, name: str) -> MessageDelta:
        index = len(self.message.tool_calls)
        tc = ToolCall(id=f"call_{uuid.uuid4().hex[:24]}", name=name, arguments="")
        self.message.tool_calls.append(tc)
        return MessageDelta(tool_calls=[ToolCallDelta(index=index, id=tc.id, name=name, arguments="")])

    def _arguments(self, text: str) -> MessageDelta:
        index = len(self.message.tool_calls) - 1
        self.message.tool_calls[index].arguments += text
        return MessageDelta(tool_calls=[ToolCallDelta(index=index, arguments=text)])

    def _call(self, call: dict[str, Any]) -> list[MessageDelta]:
        """A call read whole: opened, then its arguments in one piece."""
        return [self._open(call["name"]), self._arguments(json.dumps(call["arguments"], ensure_ascii=False))]


def _partial_suffix(text: str) -> int:
    """Length of the longest end of `text` that could begin an opening tag."""
    for n in range(min(len(text), max(len(OPEN), len(MISTRAL)) - 1), 0, -1):
        if OPEN.startswith(text[-n:]) or MISTRAL.startswith(text[-n:]):
            return n
    return 0


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _decode(text: str, final: bool) -> tuple[Any, int] | None | bool:
    """(value, end) of the JSON value opening `text`; None while it may still complete; False if not."""
    try:
        return json.JSONDecoder().raw_decode(text)
    except ValueError:
        return False if final else None


def _as_call(value: Any) -> dict[str, Any] | None:
    """{"name", "arguments"} when `value` is a call object ("parameters" accepted as Llama 3.1 writes it)."""
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or not value["name"]:
        return None
    args = value.get("arguments", value.get("parameters", {}))
    args = _loads(args) if isinstance(args, str) else args
    return {"name": value["name"], "arguments": args} if isinstance(args, dict) else None
