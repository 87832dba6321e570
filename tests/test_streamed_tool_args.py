"""Tool-call arguments stream as they are decoded: the incremental call scanner, and the parser's deltas."""

from __future__ import annotations

import json

import pytest

from tailorlm.chat.callscan import CallScanner
from tests.test_chat_tools import parse, streamed

ARGS = ('{"q": "say \\"hi\\" {not a brace} [nor this]", "n": -1.5e3, "ok": true, "none": null, '
        '"deep": {"list": [1, {"x": "}"}, []], "é": "日本語 🦜"}, "esc": "\\\\", "u": "\\u00e9"}')
CALL_OBJ = '{"name": "search", "arguments": ' + ARGS + '}'


def scan(text: str, step: int) -> CallScanner:
    sc = CallScanner()
    for i in range(0, len(text), step):
        sc.feed(text[i:i + step])
    return sc


@pytest.mark.parametrize("step", [1, 2, 3, 7, 10_000])
def test_scanner_finds_the_arguments_object_whatever_the_pieces(step: int) -> None:
    sc = scan(CALL_OBJ + "\n</tool_call>", step)
    assert sc.name == "search" and not sc.failed
    assert sc.text[sc.args_start:sc.args_end] == ARGS and json.loads(ARGS)["deep"]["é"] == "日本語 🦜"
    assert sc.end == len(CALL_OBJ) and sc.pos == sc.end  # stops after the call object


def test_scanner_knows_the_arguments_as_they_grow() -> None:
    sc, seen = CallScanner(), []
    for ch in CALL_OBJ:
        sc.feed(ch)
        if sc.args_known is not None:
            seen.append(sc.text[sc.args_start:sc.args_known])
    assert seen[0] == "{" and seen[-1] == ARGS and all(ARGS.startswith(s) for s in seen)
    assert sc.args_end is not None and sc.end is not None


def test_scanner_other_key_orders_and_parameters() -> None:
    sc = scan('{"arguments": {"a": [1, 2]}, "name": "add"}', 1)
    assert (sc.name, sc.text[sc.args_start:sc.args_end]) == ("add", '{"a": [1, 2]}')
    sc = scan('{ "name" : "w" , "parameters" : {} }', 1)  # Llama 3.1, free whitespace
    assert (sc.name, sc.text[sc.args_start:sc.args_end], sc.end) == ("w", "{}", 36)
    sc = scan('{"name": "x", "arguments": "{\\"a\\": 1}"}', 1)  # arguments as a string: not streamable
    assert sc.name == "x" and sc.args_start is None and sc.end is not None


@pytest.mark.parametrize("text, at", [
    ('{"name": "x", "arguments": {"a": 1</tool_call>', 34),  # never closed: breaks at "<"
    ('{"name": "x", "arguments": {"a": ]}', 33),  # a bracket that does not match
    ('{not json}', 1),
    ('x{"name": "x"}', 0),
])
def test_scanner_stops_where_the_text_stops_being_json(text: str, at: int) -> None:
    sc = scan(text, 1)
    assert sc.failed and sc.pos == at and sc.end is None


def test_scanner_is_linear_in_the_text() -> None:
    """A long string argument streamed one character at a time: each piece is scanned once."""
    import time

    def run(n: int) -> float:
        body = '{"name": "w", "arguments": {"text": "' + "ab\\\"c{" * n + '"}}'
        t = time.perf_counter()
        sc = scan(body, 1)
        assert sc.end == len(body)
        return time.perf_counter() - t

    small, big = run(2_000), run(16_000)
    assert big < small * 8 * 3  # 8x the text: far from the 64x of re-scanning the buffer per piece


@pytest.mark.parametrize("step", [1, 3, 5])
def test_hermes_arguments_stream_in_pieces_and_assemble_to_the_message(step: int) -> None:
    text = f"Searching.\n<tool_call>\n{CALL_OBJ}\n</tool_call>\nand after"
    msg, deltas = parse(text, names={"search"}, step=step)
    [call] = msg.tool_calls
    assert call.name == "search" and call.arguments == ARGS  # the model's own text, byte for byte
    pieces = [t for d in deltas for t in d.tool_calls or []]
    assert (pieces[0].id, pieces[0].name, pieces[0].arguments) == (call.id, "search", "")
    assert all(p.id is None and p.name is None and p.arguments for p in pieces[1:])
    assert len(pieces) - 1 >= len(ARGS) // step - 1  # a piece per fed piece, not one at the end
    content, calls = streamed(deltas)
    assert content == msg.content == "Searching.\nand after"
    assert calls[0]["arguments"] == call.arguments


def test_arguments_stream_before_the_call_closes() -> None:
    from tailorlm.chat.tools import ToolCallParser

    parser = ToolCallParser({"add"})
    assert parser.feed('<tool_call>\n{"name": "add", "arg', None) == []
    opened, args = parser.feed('uments": {"a": 1', None)
    first, more = opened.tool_calls[0], parser.feed(', "b": 2}', None)
    assert (first.name, first.arguments, args.tool_calls[0].arguments) == ("add", "", '{"a": 1')
    assert first.id and more[0].tool_calls[0].arguments == ', "b": 2}'
    assert parser.feed("}\n</tool_call>", None) == [] and parser.finish() == []
    assert parser.message.tool_calls[0].arguments == '{"a": 1, "b": 2}'


def test_bare_json_calls_stream_and_answers_are_released_early() -> None:
    msg, deltas = parse('{"name": "add", "parameters": {"a": 1, "b": 2}}; {"name": "get_weather", '
                        '"parameters": {"city": "Rome"}}', step=2)
    assert [(c.name, c.arguments) for c in msg.tool_calls] == [("add", '{"a": 1, "b": 2}'),
                                                              ("get_weather", '{"city": "Rome"}')]
    assert len([t for d in deltas for t in d.tool_calls or []]) > 4
    from tailorlm.chat.tools import ToolCallParser

    parser = ToolCallParser({"add"})
    [early] = parser.feed('{"name": "Bob", "age', None)  # not a tool: content as soon as the name says so
    assert early.content == '{"name": "Bob", "age' and parser.feed('": 3}', None)[0].content == '": 3}'


# -- gpt-oss: tool_choice required or named is grammar-enforced -----------------------------------
FORECAST = {"type": "function", "function": {"name": "forecast", "parameters": {
    "type": "object", "required": ["unit", "days"],
    "properties": {"unit": {"enum": ["celsius", "fahrenheit"]}, "days": {"type": "integer", "minimum": 1, "maximum": 7}}}}}
CLOCK = {"type": "function", "function": {"name": "clock", "parameters": {
    "type": "object", "required": ["zone"], "properties": {"zone": {"enum": ["utc", "cet"]}}}}}
GPT_OSS = "tiny-random-gpt-oss"
END = 200007  # <|end|>: biased up so that random weights end their reasoning where the grammar allows it


@pytest.fixture(scope="module")
def gptoss_server(tmp_path_factory):
    """A tiny gpt-oss with random weights (nothing taught): alone it never writes a harmony tool call."""
    from tailorlm.config import Settings
    from tailorlm.store import ModelStore
    from tests.server_harness import live_server
    from tests.tiny_gptoss import make_tiny_gptoss

    root = tmp_path_factory.mktemp("random-gptoss")
    ModelStore(root / "home").import_path(make_tiny_gptoss(root / "tiny", seed=3), name=GPT_OSS, show_progress=False)
    with live_server(Settings(home=root / "home", threads=2, preload=False)) as live:
        yield live


@pytest.mark.parametrize("tool_choice, names", [
    ({"type": "function", "function": {"name": "forecast"}}, {"forecast"}),
    ("required", {"forecast", "clock"}),
])
def test_gptoss_forced_calls_are_valid_and_stream_their_arguments(gptoss_server, tool_choice, names) -> None:
    import jsonschema

    client = gptoss_server.client()
    kw = dict(model=GPT_OSS, messages=[{"role": "user", "content": "Weather for the week?"}], tools=[FORECAST, CLOCK],
              tool_choice=tool_choice, temperature=0, max_tokens=64, logit_bias={str(END): 30})
    out = client.chat.completions.create(**kw)
    assert out.choices[0].finish_reason == "tool_calls"
    [call] = out.choices[0].message.tool_calls
    assert call.function.name in names
    schema = {"forecast": FORECAST, "clock": CLOCK}[call.function.name]["function"]["parameters"]
    jsonschema.validate(json.loads(call.function.arguments), schema)
    deltas = [t for c in client.chat.completions.create(stream=True, **kw) if c.choices
              for t in c.choices[0].delta.tool_calls or []]
    assert (deltas[0].type, deltas[0].function.name, deltas[0].function.arguments) == ("function", call.function.name, "")
    assert len(deltas) >= 3 and "".join(d.function.arguments for d in deltas[1:]) == call.function.arguments
    free = client.chat.completions.create(**{**kw, "tool_choice": "auto"})  # the same weights, unconstrained
    assert not free.choices[0].message.tool_calls
