"""Constrained decoding: response_format and grammars on SmolLM2's tokenizer, then on the real model."""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from tailorlm.chat import TextTokenizer, render_chat
from tailorlm.chat import structured
from tailorlm.chat.tools import plan
from tailorlm.engine import SamplingParams
from tailorlm.errors import InvalidRequestError
from tests.test_chat_tokenizer import smol_tok  # noqa: F401  (fixture)

PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age"], "properties": {
    "name": {"type": "string", "maxLength": 24}, "age": {"type": "integer", "minimum": 0, "maximum": 150}}}
SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}


def feed(tok: TextTokenizer, constraint, text: str) -> bool:
    """Advance `constraint` through the tokens of `text`; False at the first token it refuses."""
    for t in tok.encode(text, add_special_tokens=False):
        if not constraint.allowed()[t]:
            return False
        constraint.accept(t)
    return True


def allowed_ids(constraint) -> list[int]:
    return constraint.allowed().nonzero().flatten().tolist()


def test_json_schema_admits_matching_json_then_only_eos(smol_tok: TextTokenizer) -> None:
    factory = structured.constraint_factory(smol_tok, SCHEMA_FORMAT)
    c = factory()
    assert feed(smol_tok, c, '{"name": "Ada", "age": 36}')
    assert c.done and allowed_ids(c) == smol_tok.eos_token_ids
    assert not feed(smol_tok, factory(), '{"name": "Ada", "age": "36"}')  # wrong type
    assert not feed(smol_tok, factory(), '{"name": "Ada", "age": 36, "x": 1}')  # additionalProperties
    assert not feed(smol_tok, factory(), '{"name":"Ada"')  # one canonical layout: ", " and ": "
    assert not feed(smol_tok, factory(), 'Sure: {')


def test_json_object_admits_any_object(smol_tok: TextTokenizer) -> None:
    factory = structured.constraint_factory(smol_tok, {"type": "json_object"})
    assert feed(smol_tok, c := factory(), '{"a": [1, 2.5, null, true], "b": {"c": "d"}}') and c.done
    assert not feed(smol_tok, factory(), "[1, 2]")
    assert not feed(smol_tok, factory(), '"text"')


def test_mask_matches_llguidance(smol_tok: TextTokenizer) -> None:
    c = structured.constraint_factory(smol_tok, SCHEMA_FORMAT)()
    for text in ['{"', 'name": "A', 'da", "age": 3']:
        assert feed(smol_tok, c, text)
        reference = torch.frombuffer(bytearray(c.matcher.compute_logit_bias()), dtype=torch.uint8) > 0
        mask = c.allowed()
        assert mask.dtype == torch.bool and torch.equal(mask, reference[: mask.shape[0]])


def test_factories_are_independent_and_tokenizer_is_cached(smol_tok: TextTokenizer) -> None:
    assert structured.llg_tokenizer(smol_tok) is structured.llg_tokenizer(smol_tok)
    factory = structured.json_schema_constraint(smol_tok, PERSON)
    a, b = factory(), factory()
    assert feed(smol_tok, a, '{"name": "Ada"')
    assert feed(smol_tok, b, '{"name": "Bob"')  # b did not see a's tokens


def test_grammar_constraint_takes_lark_and_llguidance_grammars(smol_tok: TextTokenizer) -> None:
    yes_no = structured.grammar_constraint(smol_tok, 'start: "yes" | "no"')
    assert feed(smol_tok, c := yes_no(), "no") and allowed_ids(c) == smol_tok.eos_token_ids
    assert not feed(smol_tok, yes_no(), "maybe")
    llg = json.dumps({"grammars": [{"lark_grammar": 'start: "ok" %json {"type": "integer"}'}]})
    assert feed(smol_tok, c := structured.grammar_constraint(smol_tok, llg)(), "ok42")
    with pytest.raises(InvalidRequestError, match="cannot be compiled") as err:
        structured.grammar_constraint(smol_tok, "start: undefined_rule", param="grammar")
    assert err.value.param == "grammar"


@pytest.mark.parametrize("fmt", [
    {"type": "xml"},
    {"type": "json_schema"},
    {"type": "json_schema", "json_schema": {"name": "x"}},
    {"type": "json_schema", "json_schema": {"name": "x", "schema": "not an object"}},
    {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}},
    {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "format": "unknown-fmt"}}},
    "json_object",
])
def test_bad_response_format_is_rejected_before_generation(smol_tok: TextTokenizer, fmt) -> None:
    with pytest.raises(InvalidRequestError) as err:
        structured.constraint_factory(smol_tok, fmt)
    assert err.value.param == "response_format"


# ---- the real default model through the engine (slow) ----

@pytest.fixture(scope="module")
def model(default_store_home):
    from tailorlm.config import Settings
    from tailorlm.runtime import open_model

    opened = open_model(settings=Settings(home=default_store_home), show_progress=False)
    yield opened
    opened.close()


def generate(model, prompt: list[int], constraint, temperature: float, seed: int | None, max_tokens: int):
    """Text and finish reason of one constrained request (the EOS token, if any, left out of the text)."""
    events = list(model.engine.submit(prompt, SamplingParams(temperature=temperature, seed=seed,
                                                             max_tokens=max_tokens, constraint=constraint)))
    ids = [e.token_id for e in events if e.token_id is not None and not e.is_stop_token]
    return model.tokenizer.decode(ids), events[-1].finish_reason


SETTINGS = [(0.0, None), (1.0, 1), (1.0, 2), (1.0, 3)]


@pytest.mark.slow
def test_real_model_json_schema_output_always_validates(model) -> None:
    prompt = render_chat(model.tokenizer, [{"role": "user", "content": "Describe a person as JSON."}])
    factory = structured.constraint_factory(model.tokenizer, SCHEMA_FORMAT)
    for temperature, seed in SETTINGS:
        text, reason = generate(model, prompt, factory(), temperature, seed, max_tokens=40)
        assert reason == "stop", (seed, text)  # the grammar completed and only EOS was allowed
        jsonschema.validate(json.loads(text), PERSON)


@pytest.mark.slow
def test_real_model_json_object(model) -> None:
    ask = "Give a JSON object with a city and its country."
    prompt = render_chat(model.tokenizer, [{"role": "user", "content": ask}])
    factory = structured.constraint_factory(model.tokenizer, {"type": "json_object"})
    for temperature, seed in [(0.0, None), (0.7, 1), (0.7, 2)]:
        text, reason = generate(model, prompt, factory(), temperature, seed, max_tokens=60)
        assert reason == "stop" and isinstance(json.loads(text), dict), (seed, text)


@pytest.mark.slow
def test_real_model_tool_choice_required_and_named(model) -> None:
    from tests.test_chat_tools import ADD, WEATHER

    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    cases = [("required", {"parallel_tool_calls": False}), ({"type": "function", "function": {"name": "add"}}, {})]
    for choice, kw in cases:
        p = plan(model.tokenizer, messages, [WEATHER, ADD], choice, **kw)
        for temperature, seed in [(0.0, None), (0.5, 7)]:
            text, reason = generate(model, p["prompt"], p["constraint"](), temperature, seed, max_tokens=48)
            parser = p["parser"]()
            parser.feed(text, None)
            parser.finish()
            assert reason == "stop" and parser.message.content == "", text
            [call] = parser.message.tool_calls
            schema = {"get_weather": WEATHER, "add": ADD}[call.name]["function"]["parameters"]
            jsonschema.validate(json.loads(call.arguments), schema)
            assert choice == "required" or call.name == "add"
