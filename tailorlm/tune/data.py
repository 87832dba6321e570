"""Validate fine-tuning JSONL files in OpenAI's formats (chat, prompt/completion), line by line.

Nothing raises on bad data: every problem is collected as a `Problem` with its 1-based line, and
every dropped example is named with its reason. Token counts come from the model's own chat
template, rendered exactly as at serving time, so what is checked is what will be trained.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tailorlm.chat import TextTokenizer
from tailorlm.chat.template import ROLES
from tailorlm.errors import InvalidRequestError, TailorError
from tailorlm.tune.data_tokens import count_chat, count_completion
from tailorlm.tune.data_stats import DataStats, summarize

Severity = Literal["error", "warning"]
Format = Literal["chat", "prompt_completion"]
MIN_EXAMPLES = 10  # fewer than this rarely teaches anything; OpenAI asks for at least 10


@dataclass(frozen=True)
class Problem:
    """One finding; `line` is 1-based, or None for the file as a whole."""

    line: int | None
    severity: Severity
    message: str


@dataclass
class Example:
    """A valid example: its line, parsed JSON, and token counts (total, and trained on)."""

    line: int
    data: dict[str, Any]
    tokens: int
    trainable_tokens: int


@dataclass
class DataReport:
    """What `check_file` found: valid examples, problems, and the numbers that summarize them."""

    path: Path
    format: Format | None
    format_line: int | None = None  # the line that set the file's format
    examples: list[Example] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    stats: DataStats = field(default_factory=DataStats)

    @property
    def ok(self) -> bool:
        """True when there is no error (warnings allowed)."""
        return not any(p.severity == "error" for p in self.problems)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (examples themselves left out: they can be large)."""
        return {
            "file": str(self.path),
            "format": self.format,
            "ok": self.ok,
            "problems": [{"line": p.line, "severity": p.severity, "message": p.message} for p in self.problems],
            "stats": self.stats.to_dict(),
        }


def check_file(path: str | Path, tokenizer: TextTokenizer, context_length: int | None,
               epochs: int | None = None) -> DataReport:
    """Validate the JSONL file at `path`; InvalidRequestError only if it cannot be read at all."""
    path = Path(path)
    raw = _read(path)
    report = DataReport(path=path, format=None)
    seen: dict[str, int] = {}  # canonical JSON -> first line, for duplicates
    dropped: list[tuple[int, str]] = []
    count = 0
    for number, line_bytes in enumerate(raw.splitlines(), start=1):
        if not line_bytes.strip():
            continue  # blank lines are not examples
        count += 1
        errors: list[str] = []
        example = _check_line(number, line_bytes, tokenizer, context_length, report, errors)
        if errors:
            report.problems.extend(Problem(number, "error", e) for e in errors)
            dropped.append((number, errors[0]))
            continue
        assert example is not None
        key = json.dumps(example.data, sort_keys=True, ensure_ascii=False)
        if key in seen:
            report.problems.append(Problem(number, "warning", f"duplicate of line {seen[key]}"))
        else:
            seen[key] = number
        report.examples.append(example)
    if count == 0:
        report.problems.append(Problem(None, "error", "the file has no examples"))
    elif len(report.examples) < MIN_EXAMPLES:
        report.problems.append(Problem(
            None, "warning", f"only {len(report.examples)} valid examples; at least {MIN_EXAMPLES} are recommended"))
    report.stats = summarize(count, report.examples, dropped, epochs)
    return report


def _read(path: Path) -> bytes:
    """The file's bytes, or a plain InvalidRequestError saying why not."""
    if not path.exists():
        raise InvalidRequestError(f"{path} does not exist", param="file")
    if not path.is_file():
        raise InvalidRequestError(f"{path} is not a file", param="file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidRequestError(f"cannot read {path}: {exc.strerror or exc}", param="file") from exc


def _check_line(number: int, line_bytes: bytes, tok: TextTokenizer, context_length: int | None,
                report: DataReport, errors: list[str]) -> Example | None:
    """Parse and validate one line, appending its errors; the example when it is valid."""
    try:
        data = json.loads(line_bytes.decode("utf-8"))
    except UnicodeDecodeError:
        errors.append("not UTF-8 text")
        return None
    except json.JSONDecodeError as exc:
        errors.append(f"invalid JSON: {exc.msg} (column {exc.colno})")
        return None
    if not isinstance(data, dict):
        errors.append(f"not a JSON object (got {_kind(data)})")
        return None
    fmt = _format_of(data)
    if fmt is None:
        errors.append("unknown format: expected 'messages' (chat) or 'prompt' and 'completion'")
        return None
    if report.format is None:
        report.format, report.format_line = fmt, number
    elif fmt != report.format:
        errors.append(f"mixed formats: this line is {_label(fmt)} but the file is {_label(report.format)} "
                      f"(from line {report.format_line})")
        return None
    if fmt == "chat":
        _check_chat(data, errors)
    else:
        _check_completion(data, errors)
    if errors:
        return None
    try:
        tokens, trainable = count_chat(tok, data) if fmt == "chat" else count_completion(tok, data)
    except TailorError as exc:
        errors.append(exc.message)
        return None
    if context_length is not None and tokens > context_length:
        errors.append(f"too long: {tokens} tokens, more than the model's context of {context_length}")
        return None
    return Example(line=number, data=data, tokens=tokens, trainable_tokens=trainable)


def _format_of(data: Mapping[str, Any]) -> Format | None:
    if "messages" in data:
        return "chat"
    if "prompt" in data or "completion" in data:
        return "prompt_completion"
    return None


def _label(fmt: Format) -> str:
    return "chat" if fmt == "chat" else "prompt/completion"


def _kind(value: Any) -> str:
    return {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean",
            type(None): "null"}.get(type(value), type(value).__name__)


def _check_chat(data: Mapping[str, Any], errors: list[str]) -> None:
    """Chat format: messages with known roles and content, a trainable assistant turn, valid weights."""
    messages = data["messages"]
    if not isinstance(messages, list) or not messages:
        errors.append("'messages' must be a non-empty array of message objects")
        return
    if "prompt" in data or "completion" in data:
        errors.append("mixed formats: a line has 'messages' and 'prompt'/'completion'")
    tools = data.get("tools")
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
        errors.append("'tools' must be an array of tool objects")
    assistants = trainable = 0
    bad_weight = False
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            errors.append(f"{where} is not an object (got {_kind(m)})")
            continue
        role = m.get("role")
        if role not in ROLES:
            errors.append(f"{where} has unknown role {role!r}; expected one of {', '.join(ROLES)}")
            continue
        _check_content(m, where, errors)
        if "weight" in m:
            if role != "assistant":
                errors.append(f"{where} has 'weight', which only assistant messages may have")
            elif type(m["weight"]) is not int or m["weight"] not in (0, 1):  # bool is not a weight
                bad_weight = True
                errors.append(f"{where} has weight {json.dumps(m['weight'])}; it must be 0 or 1")
        if role == "assistant":
            assistants += 1
            trainable += m.get("weight", 1) != 0
    if assistants == 0:
        errors.append("no assistant message")
    elif trainable == 0 and not bad_weight:
        errors.append("no trainable assistant message: every assistant message has weight 0")


def _check_content(m: Mapping[str, Any], where: str, errors: list[str]) -> None:
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
        errors.append(f"{where}.content must be a string or a list of text parts (got {_kind(content)})")
    elif not content.strip():
        errors.append(f"{where} has empty content")


def _check_completion(data: Mapping[str, Any], errors: list[str]) -> None:
    """Prompt/completion format: both present as strings, a non-empty completion."""
    for key in ("prompt", "completion"):
        if key not in data:
            errors.append(f"missing '{key}'")
        elif not isinstance(data[key], str):
            errors.append(f"'{key}' must be a string (got {_kind(data[key])})")
    if isinstance(data.get("completion"), str) and not data["completion"].strip():
        errors.append("empty completion")
