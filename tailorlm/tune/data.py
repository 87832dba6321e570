"""Validate fine-tuning JSONL files in OpenAI's formats (chat, prompt/completion, preference pairs), line by line.

Nothing raises on bad data: every problem is collected as a `Problem` with its 1-based line, and
every dropped example is named with its reason. Token counts come from the model's own chat
template, rendered exactly as at serving time, so what is checked is what will be trained. Without a tokenizer
only the lines' structure is checked (what the API does when a job is created).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tailorlm.chat import TextTokenizer
from tailorlm.errors import InvalidRequestError, TailorError
from tailorlm.tune.data_messages import check_message, check_tools, kind
from tailorlm.tune.data_preference import check_preference, is_preference
from tailorlm.tune.data_stats import DPO_COST, TRAIN_TOKENS_PER_SECOND, DataStats, summarize
from tailorlm.tune.data_tokens import count_chat, count_completion, count_preference

Severity = Literal["error", "warning"]
Format = Literal["chat", "prompt_completion", "preference"]
LABELS: dict[str | None, str] = {"chat": "chat", "prompt_completion": "prompt/completion",
                                 "preference": "preference pairs", None: "unknown"}
MIN_EXAMPLES = 10  # fewer than this rarely teaches anything; OpenAI asks for at least 10


@dataclass(frozen=True)
class Problem:
    """One finding; `line` is 1-based, or None for the file as a whole."""

    line: int | None
    severity: Severity
    message: str


@dataclass
class Example:
    """A valid example: its line, parsed JSON, and token counts (total, and trained on; for a pair, both sides)."""

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


def check_file(path: str | Path, tokenizer: TextTokenizer | None, context_length: int | None,
               epochs: int | None = None) -> DataReport:
    """Validate the JSONL file at `path` (its structure only when `tokenizer` is None); InvalidRequestError only
    if it cannot be read at all."""
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
        unit = "pairs" if report.format == "preference" else "examples"
        report.problems.append(Problem(
            None, "warning", f"only {len(report.examples)} valid {unit}; at least {MIN_EXAMPLES} are recommended"))
    speed = TRAIN_TOKENS_PER_SECOND / (DPO_COST if report.format == "preference" else 1.0)
    report.stats = summarize(count, report.examples, dropped, epochs, speed)
    return report


def method_mismatch(report: DataReport, method: str) -> str | None:
    """Why `method` cannot train on the kind of lines this file holds, or None when it can."""
    fmt = report.format
    if method == "supervised" and fmt == "preference":
        return f'holds preference pairs (from line {report.format_line}); train on them with method {{"type": "dpo"}}'
    if method == "dpo" and fmt not in (None, "preference"):
        return (f"holds {LABELS[fmt]} examples (from line {report.format_line}), not preference pairs: method dpo "
                'trains on lines of {"input": {"messages": [...]}, "preferred_output": [...], "non_preferred_output": '
                "[...]}")
    return None


def require_method(report: DataReport, method: str, param: str, name: str) -> None:
    """Refuse a file that `method` cannot train on: preference pairs for supervised, anything else for dpo, and
    for dpo any invalid line (a pair missing a side is a broken file, not a smaller one: docs/decisions.md).
    The message names the file, the line and the field, as `tailor data check` does."""
    mismatch = method_mismatch(report, method)
    if mismatch:
        raise InvalidRequestError(f"{param} {name} {mismatch}", param=param)
    errors = report.errors
    if method == "dpo" and errors:
        first = errors[0]
        where = f" line {first.line}" if first.line is not None else ""
        more = f" ({len(errors) - 1} more errors; see `tailor data check`)" if len(errors) > 1 else ""
        raise InvalidRequestError(f"{param} {name}{where}: {first.message}{more}", param=param)


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


def _check_line(number: int, line_bytes: bytes, tok: TextTokenizer | None, context_length: int | None,
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
        errors.append(f"not a JSON object (got {kind(data)})")
        return None
    fmt = _format_of(data)
    if fmt is None:
        errors.append("unknown format: expected 'messages' (chat), 'prompt' and 'completion', or 'input', "
                      "'preferred_output' and 'non_preferred_output' (preference pairs)")
        return None
    if report.format is None:
        report.format, report.format_line = fmt, number
    elif fmt != report.format:
        errors.append(f"mixed formats: this line is {LABELS[fmt]} but the file is {LABELS[report.format]} "
                      f"(from line {report.format_line})")
        return None
    CHECKS[fmt](data, errors)
    if errors:
        return None
    if tok is None:
        return Example(line=number, data=data, tokens=0, trainable_tokens=0)
    try:
        tokens, trainable, longest = COUNTS[fmt](tok, data)
    except TailorError as exc:
        errors.append(exc.message)
        return None
    if context_length is not None and longest > context_length:
        errors.append(f"too long: {longest} tokens, more than the model's context of {context_length}")
        return None
    return Example(line=number, data=data, tokens=tokens, trainable_tokens=trainable)


def _format_of(data: Mapping[str, Any]) -> Format | None:
    if is_preference(data):
        return "preference"
    if "messages" in data:
        return "chat"
    if "prompt" in data or "completion" in data:
        return "prompt_completion"
    return None


def _check_chat(data: Mapping[str, Any], errors: list[str]) -> None:
    """Chat format: messages with known roles and content, a trainable assistant turn, valid weights."""
    messages = data["messages"]
    if not isinstance(messages, list) or not messages:
        errors.append("'messages' must be a non-empty array of message objects")
        return
    if "prompt" in data or "completion" in data:
        errors.append("mixed formats: a line has 'messages' and 'prompt'/'completion'")
    check_tools(data.get("tools"), "tools", errors)
    assistants = trainable = 0
    bad_weight = False
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        role = check_message(m, where, errors)
        if role is None:
            continue
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


def _check_completion(data: Mapping[str, Any], errors: list[str]) -> None:
    """Prompt/completion format: both present as strings, a non-empty completion."""
    for key in ("prompt", "completion"):
        if key not in data:
            errors.append(f"missing '{key}'")
        elif not isinstance(data[key], str):
            errors.append(f"'{key}' must be a string (got {kind(data[key])})")
    if isinstance(data.get("completion"), str) and not data["completion"].strip():
        errors.append("empty completion")


CHECKS = {"chat": _check_chat, "prompt_completion": _check_completion, "preference": check_preference}
COUNTS = {"chat": count_chat, "prompt_completion": count_completion, "preference": count_preference}
