"""Tool calling: the output parser, prompt rendering with and without template support, tool_choice."""

from __future__ import annotations

import copy
import json

import pytest

from tailorlm.chat import TextTokenizer, render_chat_text
from tailorlm.chat.tools import ToolCallParser, call_grammar, plan, supports_tools
from tailorlm.errors import InvalidRequestError
from tests.test_chat_tokenizer import bpe_tok, smol_tok  # noqa: F401  (fixtures)

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
ADD = {"type": "function", "function": {
    "name": "add", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                                  "required": ["a", "b"], "additionalProperties": False}}}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
# A tools-aware template in the spirit of Qwen2.5's: tools in a system turn, calls rendered from objects.
TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTOOLS:{% for t in tools %}{{ t.function.name }};{% endfor %}<|im_end|>\n"
    "{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.tool_calls %}{% for c in m.tool_calls %}"
    "CALL {{ c.function.name }} {{ c.function.arguments | tojson }}{% endfor %}{% else %}{{ m.content }}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
HISTORY = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21C"},
    {"role": "tool", "tool_call_id": "call_2", "content": "windy"},
]


def parse(text: str | list[str], names=frozenset({"get_weather", "add"}), step: int = 3):
    """Feed `text` in pieces of `step` characters (or the given pieces); return (message, deltas)."""
    pieces = text if isinstance(text, list) else [text[i:i + step] for i in range(0, len(text), step)]
    parser = ToolCallParser(set(names))
    deltas = [d for p in pieces for d in parser.feed(p, None)] + parser.finish()
    return parser.message, deltas


def streamed(deltas) -> tuple[str, dict[int, dict]]:
    """Concatenate content and tool-call deltas the way a streaming client does."""
    content, calls = "", {}
    for d in deltas:
        content += d.content or ""
        for t in d.tool_calls or []:
            call = calls.setdefault(t.index, {"id": None, "name": None, "arguments": ""})
            call["id"] = call["id"] or t.id
            call["name"] = call["name"] or t.name
            call["arguments"] += t.arguments or ""
    return content, calls


@pytest.mark.parametrize("step", [1, 2, 5, 1000])
def test_content_then_call_streams_to_the_final_message(step: int) -> None:
    msg, deltas = parse("Let me check.\n" + CALL + "\n", step=step)
    assert msg.content == "Let me check."
    [call] = msg.tool_calls
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    assert call.id.startswith("call_") and len(call.id) > 10
    content, calls = streamed(deltas)
    assert content == msg.content
    assert calls == {0: {"id": call.id, "name": "get_weather", "arguments": call.arguments}}
    first = next(d for d in deltas if d.tool_calls).tool_calls[0]
    assert (first.index, first.id, first.name) == (0, call.id, "get_weather")


def test_parallel_calls_get_their_own_index_and_id() -> None:
    add = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
    msg, deltas = parse(CALL + "\n" + add)
    assert [c.name for c in msg.tool_calls] == ["get_weather", "add"]
    assert msg.tool_calls[0].id != msg.tool_calls[1].id and msg.content == ""
    _, calls = streamed(deltas)
    assert [calls[i]["arguments"] for i in (0, 1)] == [c.arguments for c in msg.tool_calls]


def test_false_start_is_released_as_content() -> None:
    for text in ["a < b, <tool and <tool_cal> stay text", "ends with <tool_c", "x <tool_call"[:9]]:
        msg, deltas = parse(text, step=1)
        assert msg.content == text and not msg.tool_calls
        assert streamed(deltas)[0] == text


def test_only_a_possible_tag_prefix_is_held_back() -> None:
    parser = ToolCallParser({"get_weather"})
    assert [d.content for d in parser.feed("Hello <tool", None)] == ["Hello"]
    assert [d.content for d in parser.feed("box>", None)] == [" <toolbox>"]


def test_malformed_json_inside_tags_stays_content() -> None:
    for bad in ["<tool_call>\n{not json}\n</tool_call>", '<tool_call>{"arguments": {}}</tool_call>',
                '<tool_call>{"name": "x", "arguments": [1]}</tool_call>']:
        msg, deltas = parse(bad + " done")
        assert msg.content == bad + " done" and not msg.tool_calls
        assert streamed(deltas)[0] == msg.content


def test_unclosed_call_at_the_end() -> None:
    msg, _ = parse(CALL.removesuffix("</tool_call>"))  # the model stopped before the closing tag
    assert [c.name for c in msg.tool_calls] == ["get_weather"]
    msg, _ = parse(CALL[:40])  # cut by max_tokens: not a call
    assert msg.content == CALL[:40] and not msg.tool_calls


def test_other_conventions() -> None:
    msg, _ = parse(' {"name": "get_weather", "parameters": {"city": "Oslo"}}')  # Llama 3.1
    assert msg.tool_calls[0].arguments == '{"city": "Oslo"}' and msg.content == ""
    msg, _ = parse('{"name": "Bob", "parameters": {}}')  # not a known tool: an answer, not a call
    assert msg.content == '{"name": "Bob", "parameters": {}}' and not msg.tool_calls
    msg, _ = parse('[TOOL_CALLS][{"name": "add", "arguments": {"a": 1, "b": 2}}, {"name": "get_weather", '
                   '"arguments": {"city": "Rome"}}]')  # Mistral
    assert [c.name for c in msg.tool_calls] == ["add", "get_weather"]
    parser = ToolCallParser({"add"}, {7: "[TOOL_CALLS]"})  # a special token skipped in text, seen by id
    parser.feed("", 7), parser.feed('[{"name": "add", "arguments": {}}]', 8), parser.finish()
    assert parser.message.tool_calls[0].name == "add"


def test_plain_text_passes_through_unchanged() -> None:
    text = "Paris is the capital of France.\n\n{\"a\": 1} and more  \n"
    msg, deltas = parse(text, step=2)
    assert msg.content == text and streamed(deltas)[0] == text


def with_template(tok: TextTokenizer, template: str) -> TextTokenizer:
    fresh = copy.deepcopy(tok)
    fresh.hf.chat_template = template
    return fresh


def test_render_without_template_support(smol_tok: TextTokenizer) -> None:
    assert not supports_tools(smol_tok)
    p = plan(smol_tok, HISTORY, [WEATHER], "auto")
    text = smol_tok.decode(p["prompt"])
    assert text.startswith("<|im_start|>system\n# Tools\n") and '"name": "get_weather"' in text
    assert "<|im_start|>assistant\n" + CALL + "<|im_end|>" in text
    assert "<|im_start|>user\n<tool_response>\nsunny, 21C\n</tool_response>\n<tool_response>\nwindy\n" in text
    assert text.endswith("<|im_start|>assistant\n") and "SmolLM" not in text
    sys_first = plan(smol_tok, [{"role": "system", "content": "Be brief."}, *HISTORY[:1]], [WEATHER], None)
    assert smol_tok.decode(sys_first["prompt"]).startswith("<|im_start|>system\nBe brief.\n\n# Tools")


def test_render_with_template_support(bpe_tok: TextTokenizer) -> None:
    tok = with_template(bpe_tok, TOOLS_TEMPLATE)
    assert supports_tools(tok)
    text = tok.decode(plan(tok, HISTORY, [WEATHER, ADD], "auto")["prompt"])
    assert text.startswith("<|im_start|>system\nTOOLS:get_weather;add;<|im_end|>")
    assert 'CALL get_weather {"city": "Paris"}' in text  # arguments handed to the template as an object
    assert text == render_chat_text(tok, plan_messages(), tools=[WEATHER, ADD])


def plan_messages():
    out = copy.deepcopy(HISTORY)
    out[1]["content"] = ""
    out[1]["tool_calls"][0]["function"]["arguments"] = {"city": "Paris"}
    return out


def test_parser_factory_gives_fresh_parsers(smol_tok: TextTokenizer) -> None:
    p = plan(smol_tok, HISTORY[:1], [WEATHER], "auto")
    a, b = p["parser"](), p["parser"]()
    a.feed(CALL, None)
    a.finish()
    assert a.message.tool_calls and not b.message.tool_calls and p["constraint"]() is None


@pytest.mark.parametrize("tools, choice, param", [
    ([WEATHER], {"type": "function", "function": {"name": "nope"}}, "tool_choice"),
    ([WEATHER], "sometimes", "tool_choice"),
    ([WEATHER], {"type": "function"}, "tool_choice"),
    ([{"type": "function", "function": {"description": "no name"}}], "auto", "tools"),
    ([{"type": "function", "function": {"name": "bad name!"}}], "auto", "tools"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}], "auto", "tools"),
    ([WEATHER, WEATHER], "auto", "tools"),
    ([], "auto", "tools"),
])
def test_invalid_tools_and_tool_choice(smol_tok: TextTokenizer, tools, choice, param) -> None:
    with pytest.raises(InvalidRequestError) as err:
        plan(smol_tok, HISTORY[:1], tools, choice)
    assert err.value.param == param


def accepts(tok: TextTokenizer, constraint, text: str, only_eos: bool = True) -> bool:
    """Whether `constraint` lets the tokens of `text` through, then allows EOS (and, with `only_eos`,
    nothing else)."""
    for t in tok.encode(text, add_special_tokens=False):
        if not constraint.allowed()[t]:
            return False
        constraint.accept(t)
    allowed = constraint.allowed()
    return bool(allowed[tok.eos_token_ids].all()) and (not only_eos or int(allowed.sum()) == 1)


def test_required_and_named_constraints(smol_tok: TextTokenizer) -> None:
    add = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
    required = plan(smol_tok, HISTORY[:1], [WEATHER, ADD], "required")["constraint"]
    assert accepts(smol_tok, required(), CALL, only_eos=False)  # EOS, or another call
    assert accepts(smol_tok, required(), CALL + add, only_eos=False)
    assert not accepts(smol_tok, required(), CALL.replace('"Paris"}', '"Paris", "unit": "C"}'))  # closed
    assert not accepts(smol_tok, required(), "Sure! " + CALL)
    one = plan(smol_tok, HISTORY[:1], [WEATHER, ADD], "required", parallel_tool_calls=False)["constraint"]
    assert accepts(smol_tok, one(), CALL) and not accepts(smol_tok, one(), CALL + add)
    named = plan(smol_tok, HISTORY[:1], [WEATHER, ADD], {"type": "function", "function": {"name": "add"}})
    assert accepts(smol_tok, named["constraint"](), add) and not accepts(smol_tok, named["constraint"](), CALL)
    assert not accepts(smol_tok, named["constraint"](), add.replace("2}", '"2"}'))  # schema: integer


def test_call_grammar_moves_defs_to_the_root(smol_tok: TextTokenizer) -> None:
    from tailorlm.chat.structured import grammar_constraint

    tool = {"type": "function", "function": {"name": "pick", "parameters": {
        "type": "object", "properties": {"c": {"$ref": "#/$defs/Color"}}, "required": ["c"],
        "$defs": {"Color": {"enum": ["red", "blue"]}}}}}
    grammar = call_grammar([tool], many=False)
    assert '"t0_Color"' in grammar and "#/$defs/t0_Color" in grammar
    ok = '<tool_call>\n{"name": "pick", "arguments": {"c": "red"}}\n</tool_call>'
    assert accepts(smol_tok, grammar_constraint(smol_tok, grammar)(), ok)
    assert not accepts(smol_tok, grammar_constraint(smol_tok, grammar)(), ok.replace("red", "green"))


def test_tools_with_a_response_format(smol_tok: TextTokenizer) -> None:
    """An agent with tools and an output type: under "auto" the output is calls or the answer's JSON; a required
    or named call is a call even with a response format (before, the format's constraint replaced the call's)."""
    from tailorlm.chat.plan import ChatOptions, plan_chat

    answer = {"type": "object", "properties": {"sky": {"enum": ["sunny", "rainy"]}}, "required": ["sky"],
              "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "forecast", "schema": answer, "strict": True}}

    def constraint(choice):
        return plan_chat(smol_tok, "llama", HISTORY[:1], ChatOptions(tools=[WEATHER], tool_choice=choice,
                                                                     response_format=fmt)).constraint

    auto = constraint("auto")
    assert accepts(smol_tok, auto(), CALL, only_eos=False) and accepts(smol_tok, auto(), '{"sky": "sunny"}')
    assert not accepts(smol_tok, auto(), '{"sky": "foggy"}') and not accepts(smol_tok, auto(), "Sunny!")
    assert accepts(smol_tok, constraint("required")(), CALL, only_eos=False)
    assert not accepts(smol_tok, constraint("required")(), '{"sky": "sunny"}')
    assert constraint("none")() is not None and accepts(smol_tok, constraint("none")(), '{"sky": "rainy"}')
    fmt["json_schema"]["schema"] = {"type": "nonsense"}
    with pytest.raises(InvalidRequestError) as err:
        constraint("auto")
    assert err.value.param == "response_format"
