"""render_chat / render_chat_text: the model's own template, validated messages, clear errors."""

from __future__ import annotations

import copy

import pytest

from tailorlm.chat import TextTokenizer, render_chat, render_chat_text
from tailorlm.errors import InvalidRequestError, NoChatTemplateError
from tests.test_chat_tokenizer import bpe_tok, plain_tok, smol_tok, sp_tok  # noqa: F401  (fixtures)

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "héllo 你好 🎉"},
    {"role": "assistant", "content": "Hi!"},
    {"role": "user", "content": "What is 2+2?"},
]


def with_template(tok: TextTokenizer, template: str) -> TextTokenizer:
    """A copy of the (session-shared) `tok` carrying another chat template."""
    fresh = copy.deepcopy(tok)
    fresh.hf.chat_template = template
    return fresh


@pytest.mark.parametrize("name", ["bpe", "sp", "smol"])
@pytest.mark.parametrize("gen", [True, False])
def test_rendering_equals_apply_chat_template(request: pytest.FixtureRequest, name: str, gen: bool) -> None:
    tok: TextTokenizer = request.getfixturevalue(f"{name}_tok")
    expected = tok.hf.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=gen)
    assert render_chat_text(tok, CHAT, add_generation_prompt=gen) == expected
    ids = render_chat(tok, CHAT, add_generation_prompt=gen)
    assert ids == tok.encode(expected, add_special_tokens=False)
    assert ids == tok.hf.apply_chat_template(CHAT, tokenize=True, return_dict=False, add_generation_prompt=gen)


def test_smollm_template_specifics(smol_tok: TextTokenizer) -> None:
    text = render_chat_text(smol_tok, [{"role": "user", "content": "Hi"}])
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    ids = render_chat(smol_tok, [{"role": "user", "content": "Hi"}])
    assert ids[0] == smol_tok.hf.convert_tokens_to_ids("<|im_start|>") and ids.count(2) == 2  # <|im_end|>


def test_text_parts_are_joined(bpe_tok: TextTokenizer) -> None:
    parts = [{"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]}]
    assert render_chat_text(bpe_tok, parts) == render_chat_text(bpe_tok, [{"role": "user", "content": "one\ntwo"}])


def test_developer_becomes_system_for_templates_that_do_not_know_it(bpe_tok: TextTokenizer) -> None:
    dev = [{"role": "developer", "content": "Rules."}, {"role": "user", "content": "Hi"}]
    assert render_chat_text(bpe_tok, dev).startswith("<|im_start|>system\nRules.<|im_end|>")
    knows = with_template(bpe_tok, "{% for m in messages %}{% if m.role == 'developer' %}DEV:{% endif %}"
                                   "{{ m.role }}={{ m.content }};{% endfor %}")
    assert render_chat_text(knows, dev) == "DEV:developer=Rules.;user=Hi;"


def test_tools_and_template_kwargs_reach_the_template(bpe_tok: TextTokenizer) -> None:
    tok = with_template(bpe_tok, "{% if tools %}TOOLS:{{ tools | map(attribute='function.name') | join(',') }}\n"
                                 "{% endif %}{% for m in messages %}{{ m.content }}{% endfor %}{{ flavour }}")
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    msgs = [{"role": "user", "content": "Hi"}]
    assert render_chat_text(tok, msgs, tools=tools, flavour="!") == "TOOLS:get_weather\nHi!"


def test_assistant_turn_with_only_tool_calls(bpe_tok: TextTokenizer) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "content": "42", "tool_call_id": "c1"}]
    assert "<|im_start|>tool\n42<|im_end|>" in render_chat_text(bpe_tok, msgs)


def test_no_chat_template(plain_tok: TextTokenizer) -> None:
    with pytest.raises(NoChatTemplateError, match=r"no chat template; use plain completion \(`tailor generate --raw`"):
        render_chat(plain_tok, CHAT)


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "robot", "content": "c"}],
         "messages[2].role"),
        ([{"content": "no role"}], "messages[0].role"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": 5}], "messages[1].content"),
        ([{"role": "user"}], "messages[0].content"),
        ([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {}}]}],
         "messages[0].content[1]"),
        (["hello"], "messages[0]"),
        ([], "messages"),
        ("hello", "messages"),
    ],
)
def test_invalid_messages_name_the_param(bpe_tok: TextTokenizer, messages, param: str) -> None:
    with pytest.raises(InvalidRequestError) as err:
        render_chat(bpe_tok, messages)
    assert err.value.param == param and param in err.value.message


def test_template_refusal_is_an_invalid_request(bpe_tok: TextTokenizer) -> None:
    tok = with_template(bpe_tok, "{% if messages[0].role == 'system' %}"
                                 "{{ raise_exception('System role not supported') }}{% endif %}ok")
    with pytest.raises(InvalidRequestError, match="System role not supported") as err:
        render_chat(tok, CHAT)
    assert err.value.param == "messages"


def test_sanitize_control_tokens(bpe_tok: TextTokenizer) -> None:
    im_end = bpe_tok.hf.convert_tokens_to_ids("<|im_end|>")
    msgs = [{"role": "user", "content": "fake<|im_end|>"}]
    assert render_chat(bpe_tok, msgs).count(im_end) == 2  # the typed one became a real control token
    safe = render_chat(bpe_tok, msgs, sanitize_control_tokens=True)
    assert safe.count(im_end) == 1
    assert bpe_tok.decode(safe) == render_chat_text(bpe_tok, msgs)  # same text, different ids
