"""A batch's input file: JSONL lines `{"custom_id", "method": "POST", "url", "body"}`, all checked before any runs.

Every line is read; what is wrong with the file is reported as OpenAI reports it (a list of errors, each naming
its line, 1-based) and the batch fails without running anything. What is wrong inside a line's `body` is found
only when that line runs, and fails that line alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")
MAX_LINES = 50_000  # OpenAI's limit
MAX_ERRORS = 100  # reported; the file may hold more


@dataclass
class InputLine:
    line: int  # 1-based, as errors name it
    custom_id: str
    body: dict[str, Any]


@dataclass
class LineError:
    """OpenAI's BatchError."""

    code: str
    message: str
    line: int | None = None
    param: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param, "line": self.line}


def read_input(lines: Iterable[bytes], endpoint: str) -> tuple[list[InputLine], list[LineError]]:
    """The requests of a batch for `endpoint`, and what is wrong with the file (when anything is, run none)."""
    found: list[InputLine] = []
    errors: list[LineError] = []
    seen: set[str] = set()
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        entry, error = _check(raw, number, endpoint)
        if error is None and entry is not None and entry.custom_id in seen:
            error = LineError("duplicate_custom_id", f"The custom_id {entry.custom_id!r} is used by an earlier "
                              "line; each request of a batch needs its own.", number, "custom_id")
        if error is not None:
            errors.append(error)
            continue
        assert entry is not None
        seen.add(entry.custom_id)
        found.append(entry)
    if not found and not errors:
        errors.append(LineError("empty_file", "The input file holds no requests."))
    if len(found) > MAX_LINES:
        errors.append(LineError("too_many_requests", f"A batch holds at most {MAX_LINES:,} requests; this file "
                                f"holds {len(found):,}."))
    return found, errors[:MAX_ERRORS]


def _check(raw: bytes, number: int, endpoint: str) -> tuple[InputLine | None, LineError | None]:
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None, LineError("invalid_json_line", f"Line {number} is not valid JSON.", number)
    if not isinstance(obj, dict):
        return None, LineError("invalid_json_line", f"Line {number} is not a JSON object.", number)
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return None, LineError("missing_required_parameter", "Each request needs a custom_id (a string).",
                               number, "custom_id")
    if obj.get("method") != "POST":
        return None, LineError("invalid_method", f"The method must be POST, not {obj.get('method')!r}.", number,
                               "method")
    url = obj.get("url")
    if url not in ENDPOINTS:
        return None, LineError("invalid_url", f"The url {url!r} is not supported; a batch runs requests to "
                               f"{', '.join(ENDPOINTS)}.", number, "url")
    if url != endpoint:
        return None, LineError("mismatched_endpoint", f"The url {url!r} is not the batch's endpoint {endpoint!r}; "
                               "every request of a batch goes to its endpoint.", number, "url")
    body = obj.get("body")
    if not isinstance(body, dict):
        return None, LineError("missing_required_parameter", "Each request needs a body (a JSON object).", number,
                               "body")
    return InputLine(number, custom_id, body), None
