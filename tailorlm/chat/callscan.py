"""Reading a tool call's JSON object, {"name": ..., "arguments": {...}}, as its text arrives.

`CallScanner` keeps the structure of the text fed so far (a stack of open brackets, whether it is
inside a string) and scans each character once, runs of string characters in one regex step, so a
call streamed token by token costs time linear in its length. It knows the call's name as soon as
that string closes, where the arguments object begins, how much of it has arrived, and where it and
the call object end; it does not validate JSON beyond that (the parser decides what a call is).
"""

from __future__ import annotations

import json
import re

ARG_KEYS = ("arguments", "parameters")  # "parameters" as Llama 3.1 writes it
_STRING_RUN = re.compile(r'[^"\\]*')
_SCALAR_CHARS = frozenset("-+.0123456789eEtrufalsn")  # of numbers, true, false, null
_CLOSER = {"{": "}", "[": "]"}


class CallScanner:
    """Feed the text of one call object; read `name`, `args_start`/`args_known`/`args_end` and `end`.

    `failed` means the text stopped being JSON at `pos` (a character no JSON allows there, such as the
    "<" of a closing tag after a call that never closed its braces); scanning stops there.
    """

    def __init__(self) -> None:
        self.text = ""
        self.pos = 0  # characters scanned
        self.name: str | None = None
        self.args_start: int | None = None  # index of the arguments object's "{"
        self.args_end: int | None = None  # index just after its "}"
        self.end: int | None = None  # index just after the call object's "}"
        self.failed = False
        self._stack: list[str] = []  # open brackets
        self._in_str = self._esc = False
        self._str_start = 0
        self._expect = "open"  # in the call object: "key", "colon", "value", "scalar", "comma"
        self._key: str | None = None

    @property
    def done(self) -> bool:
        return self.end is not None or self.failed

    @property
    def args_known(self) -> int | None:
        """End of the arguments text known so far (None before the arguments object opens)."""
        if self.args_start is None:
            return None
        return self.args_end if self.args_end is not None else self.pos

    def feed(self, text: str) -> None:
        self.text += text
        s, i, n = self.text, self.pos, len(self.text)
        while i < n and not self.done:
            if self._in_str:
                if self._esc:
                    self._esc, i = False, i + 1
                    continue
                i = _STRING_RUN.match(s, i).end()
                if i < n:
                    if s[i] == "\\":
                        self._esc = True
                    else:
                        self._in_str = False
                        if len(self._stack) == 1:
                            self._member_string(s[self._str_start:i + 1])
                    i += 1
                continue
            c = s[i]
            if c in " \t\r\n":
                if self._expect == "scalar" and len(self._stack) == 1:
                    self._expect = "comma"
            elif not self._stack:
                if c != "{" or self._expect != "open":
                    self.failed = True
                    break
                self._stack.append("{")
                self._expect = "key"
            elif len(self._stack) == 1:
                if not self._member_char(c, i):
                    self.failed = True
                    break
            elif not self._nested_char(c, i):
                self.failed = True
                break
            i += 1
        self.pos = i

    def _member_string(self, raw: str) -> None:
        """A string of the call object closed: a key, or the value of one."""
        if self._expect == "key":
            self._key, self._expect = json.loads(raw), "colon"
        else:
            if self._key == "name":
                self.name = json.loads(raw)
            self._expect = "comma"

    def _member_char(self, c: str, i: int) -> bool:
        """Structure of the call object itself (depth 1); False where JSON allows no `c`."""
        e = self._expect
        if c == '"' and e in ("key", "value"):
            self._in_str, self._str_start = True, i
        elif c == ":" and e == "colon":
            self._expect = "value"
        elif c in "{[" and e == "value":
            self._stack.append(c)
            if c == "{" and self._key in ARG_KEYS:
                self.args_start, self.args_end = i, None
        elif c in _SCALAR_CHARS and e in ("value", "scalar"):
            self._expect = "scalar"
        elif c == "," and e in ("comma", "scalar"):
            self._expect = "key"
        elif c == "}" and e in ("comma", "scalar", "key"):
            self._stack.pop()
            self.end = i + 1
        else:
            return False
        return True

    def _nested_char(self, c: str, i: int) -> bool:
        """Inside a member's object or array: track brackets and strings only."""
        if c == '"':
            self._in_str = True
        elif c in "{[":
            self._stack.append(c)
        elif c in "}]":
            if _CLOSER[self._stack[-1]] != c:
                return False
            self._stack.pop()
            if len(self._stack) == 1:
                if self._key in ARG_KEYS and self.args_start is not None and self.args_end is None:
                    self.args_end = i + 1
                self._expect = "comma"
        elif c not in _SCALAR_CHARS and c not in ",:":
            return False
        return True
