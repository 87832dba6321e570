"""Constrained decoding with llguidance: OpenAI `response_format`, JSON schemas and lark grammars.

A grammar is compiled once per request (errors surface before generation, as InvalidRequestError);
each choice then gets its own `GrammarConstraint`, a copy of the compiled matcher that the engine
asks for the allowed next tokens and advances token by token. Once the grammar is complete only
EOS is allowed, so generation stops there.
"""

from __future__ import annotations

import json
import re
import threading
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from tailorlm.chat.tokenizer import TextTokenizer
from tailorlm.errors import InvalidRequestError

ConstraintFactory = Callable[[], "GrammarConstraint"]

# JSON is emitted in one canonical layout (json.dumps' separators, no free whitespace): a small
# model given free whitespace can pad with newlines until max_tokens. A schema may override this
# with its own "x-guidance" options (applied after these defaults).
JSON_OPTIONS: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
HARMONY_JSON: dict[str, Any] = {**JSON_OPTIONS, "item_separator": ",", "key_separator": ":"}
_cache: "weakref.WeakKeyDictionary[TextTokenizer, Any]" = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _llguidance() -> Any:
    try:
        import llguidance
        import llguidance.hf
        import llguidance.torch
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise InvalidRequestError(
            "Structured output needs llguidance: `pip install llguidance`.", param="response_format"
        ) from exc
    return llguidance


def llg_tokenizer(tok: TextTokenizer, *, param: str = "response_format") -> Any:
    """The llguidance view of `tok` (built once per tokenizer: ~0.3 s)."""
    with _lock:
        if tok not in _cache:
            llg = _llguidance()
            try:
                _cache[tok] = llg.hf.from_tokenizer(tok.hf, eos_token=tok.eos_token_ids or None)
            except ValueError as exc:  # a slow (python) tokenizer
                raise InvalidRequestError(
                    f"Model {tok.name!r} has no fast tokenizer, which constrained decoding needs: {exc}",
                    param=param,
                ) from exc
        return _cache[tok]


class GrammarConstraint:
    """One choice's grammar state; implements the engine's TokenConstraint protocol."""

    def __init__(self, matcher: Any, vocab_size: int, eos_ids: list[int]) -> None:
        llg = _llguidance()
        self.matcher = matcher
        self.vocab_size = vocab_size
        self._fill = llg.torch.fill_next_token_bitmask
        self._bitmask = llg.torch.allocate_token_bitmask(1, vocab_size)  # [1, ceil(V / 32)] int32
        self._eos_only = torch.zeros(vocab_size, dtype=torch.bool)
        self._eos_only[[i for i in eos_ids if i < vocab_size]] = True

    def allowed(self) -> torch.Tensor:
        """[V] bool: the tokens the grammar allows next; only EOS once it is complete (or broken)."""
        if self.matcher.is_error():
            return self._eos_only
        self._fill(self.matcher, self._bitmask)
        # Bit j of int32 word w is token 32w + j: on a little-endian host, the bytes' bits in little
        # order. numpy's unpackbits is ~10x faster here than torch ops, which wake its thread pool.
        bits = np.unpackbits(self._bitmask.numpy().view(np.uint8), bitorder="little")[: self.vocab_size]
        return torch.from_numpy(bits.view(np.bool_)) if bits.any() else self._eos_only

    def accept(self, token_id: int) -> None:
        """Advance past `token_id` (a refused token leaves the matcher in its error state: EOS next)."""
        self.matcher.consume_token(token_id)

    @property
    def done(self) -> bool:
        """True once the output is a complete sentence of the grammar."""
        return bool(self.matcher.is_accepting())

    @property
    def error(self) -> str:
        return str(self.matcher.get_error())


def compiled_constraint(tok: TextTokenizer, grammar: str, *, param: str) -> ConstraintFactory:
    """Compile an llguidance grammar definition now; the factory returns a fresh matcher per call."""
    llg = _llguidance()
    lltok = llg_tokenizer(tok, param=param)
    try:
        proto = llg.LLMatcher(lltok, grammar, log_level=0)
        error = proto.get_error() if proto.is_error() else ""
    except (ValueError, RuntimeError, TypeError) as exc:
        error = str(exc)
    if error:
        raise InvalidRequestError(f"The grammar for '{param}' cannot be compiled: {error}", param=param)
    eos = list(lltok.eos_tokens)
    return lambda: GrammarConstraint(proto.deep_copy(), lltok.vocab_size, eos)


def json_schema_grammar(schema: dict[str, Any], *, param: str = "response_format") -> str:
    """The llguidance grammar of JSON values matching `schema` (in the canonical layout)."""
    if not isinstance(schema, dict):
        raise InvalidRequestError(f"The JSON schema in '{param}' must be an object.", param=param)
    try:
        return _llguidance().LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
    except (ValueError, TypeError) as exc:
        raise InvalidRequestError(f"Invalid JSON schema in '{param}': {exc}", param=param) from exc


def json_schema_constraint(tok: TextTokenizer, schema: dict[str, Any], *,
                           param: str = "response_format") -> ConstraintFactory:
    """Outputs are exactly one JSON value matching `schema`."""
    return compiled_constraint(tok, json_schema_grammar(schema, param=param), param=param)


def grammar_constraint(tok: TextTokenizer, grammar: str, *, param: str = "response_format") -> ConstraintFactory:
    """Outputs match `grammar`: lark text (llguidance dialect, `%json {...}` allowed), or an llguidance
    grammar definition (JSON with "grammars")."""
    if not isinstance(grammar, str) or not grammar.strip():
        raise InvalidRequestError(f"The grammar in '{param}' must be a non-empty string.", param=param)
    if grammar.lstrip().startswith("{"):
        try:
            is_llg = isinstance(json.loads(grammar).get("grammars"), list)
        except (ValueError, AttributeError):
            is_llg = False
        if is_llg:
            return compiled_constraint(tok, grammar, param=param)
    return compiled_constraint(tok, _llguidance().LLMatcher.grammar_from_lark(grammar), param=param)


def answer_schema(response_format: Any) -> dict[str, Any] | None:
    """The JSON schema OpenAI's `response_format` asks the answer to match (json_object: any object); None for
    `text`. A malformed response_format is a 400 here, before generation."""
    param = "response_format"
    if not isinstance(response_format, dict):
        raise InvalidRequestError("'response_format' must be an object with a 'type'.", param=param)
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise InvalidRequestError(
                "'response_format.json_schema' must be an object with a 'name' and a 'schema' object.",
                param=param,
            )
        return spec["schema"]
    raise InvalidRequestError(
        f"'response_format.type' is {kind!r}; it must be 'text', 'json_object' or 'json_schema'.", param=param
    )


def constraint_factory(tok: TextTokenizer, response_format: dict[str, Any]) -> ConstraintFactory:
    """The constraint for OpenAI's `response_format`: json_object, or json_schema {name, schema, strict}."""
    schema = answer_schema(response_format)
    if schema is None:
        raise InvalidRequestError("'response_format' of type 'text' constrains nothing.", param="response_format")
    return json_schema_constraint(tok, schema, param="response_format")


def tool_call_grammar(functions: list[dict[str, Any]], *, many: bool, open_tag: str, close_tag: str,
                      answer: dict[str, Any] | None = None) -> str:
    """Lark grammar of `open_tag` newline {"name": ..., "arguments": ...} newline `close_tag`, once (or, with
    `many`, one or more times), naming one of `functions` ({name, parameters}) with matching arguments; with
    `answer` (a JSON schema), that or else one JSON value matching `answer` (tools with a response format).

    Calls follow each other with no separator, so that after a call the model chooses between EOS and
    another call; with a newline allowed there, small models keep repeating the call.
    """
    defs: dict[str, Any] = {}
    options = [{"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
                "properties": {"name": {"const": fn["name"]}, "arguments": _nestable(fn["parameters"], f"t{i}_", defs)}}
               for i, fn in enumerate(functions)]
    schema: dict[str, Any] = options[0] if len(options) == 1 else {"anyOf": options}
    schema = {**schema, "x-guidance": JSON_OPTIONS, **({"$defs": defs} if defs else {})}
    head, tail = json.dumps(open_tag + "\n"), json.dumps("\n" + close_tag)  # lark literals are JSON strings
    calls = f"call{'+' if many else ''}"
    rules = f"call: {head} body {tail}\nbody: %json {json.dumps(schema)}\n"
    if answer is None:
        return f"start: {calls}\n" + rules
    answer = {"x-guidance": JSON_OPTIONS, **answer}  # the schema's own options, if any, win
    return f"start: {calls} | answer\n" + rules + f"answer: %json {json.dumps(answer)}\n"


def harmony_call_grammar(functions: list[dict[str, Any]]) -> str:
    """Lark grammar of a harmony (gpt-oss) turn that calls one of `functions`: an optional analysis message
    (free reasoning), then the call: `<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>`,
    arguments matching NAME's parameters (compact JSON, as gpt-oss writes it), and `<|call|>`.

    Harmony's control tokens are matched as tokens (`<|name|>`), never as the text that spells them."""
    rules = ["start: analysis? call",
             'analysis: <|channel|> "analysis" <|message|> THINK <|end|> <|start|> "assistant"',
             "THINK: /(.|\\n)*/",
             "call: " + " | ".join(f"call{i}" for i in range(len(functions)))]
    for i, fn in enumerate(functions):
        defs: dict[str, Any] = {}
        body = _nestable(fn["parameters"], f"t{i}_", defs)
        body = {**body, "x-guidance": HARMONY_JSON, **({"$defs": defs} if defs else {})}
        header = json.dumps(f"commentary to=functions.{fn['name']} ")  # the recipient where gpt-oss writes it
        rules.append(f"call{i}: <|channel|> {header} <|constrain|> \"json\" <|message|> body{i} <|call|>")
        rules.append(f"body{i}: %json {json.dumps(body)}")
    return "\n".join(rules) + "\n"


def _nestable(schema: Any, prefix: str, defs: dict[str, Any]) -> Any:
    """A parameters schema ready to nest in a call schema: its $defs moved to the root under `prefix`
    (where "#/$defs/X" points), and objects that say nothing of additionalProperties closed to their
    declared properties, so the model cannot invent arguments (outputs still match the original)."""
    if isinstance(schema, list):
        return [_nestable(s, prefix, defs) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in ("$defs", "definitions") and isinstance(value, dict):
            defs.update({prefix + name: _nestable(sub, prefix, defs) for name, sub in value.items()})
        elif key == "$ref" and isinstance(value, str):
            out[key] = re.sub(r"^#/(\$defs|definitions)/", "#/$defs/" + prefix, value)
        else:
            out[key] = _nestable(value, prefix, defs)
    if out.get("type") == "object" and isinstance(out.get("properties"), dict):
        out.setdefault("additionalProperties", False)
    return out
