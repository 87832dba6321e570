"""The OpenAI Agents SDK against a real server on loopback, in its default wiring: `Agent(tools=[function_tool])`,
`Runner.run_sync`, the SDK's default client pointed at us, so the SDK's own OpenAIResponsesModel drives
/v1/responses. A tiny random model follows no instructions, so what it must do is set by what the SDK sends: the
first turn requires a call (tool_choice "required", enforced by constrained decoding); the tool is offered that
once (`is_enabled`), so the second turn, which carries the call and its output back, can only answer, in the
agent's output type (a JSON schema the server enforces: the answer ends where the JSON does, `completed`)."""

from __future__ import annotations

import json
from typing import Literal

import pytest

agents = pytest.importorskip("agents", reason="openai-agents is in the test extras: pip install -e '.[dev]'")

from openai import AsyncOpenAI  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from tests.test_responses_api import MODEL, home, server  # noqa: E402, F401  (fixtures)


class Forecast(BaseModel):
    city: Literal["Paris", "Rome"]
    sky: Literal["sunny", "rainy"]


@pytest.fixture
def default_client(server):
    """The SDK's process-wide default client, pointed at the server for one test (and its tracing off: the
    exporter would try to reach api.openai.com)."""
    from agents.models import _openai_shared

    before = _openai_shared.get_default_openai_client()
    agents.set_tracing_disabled(True)
    agents.set_default_openai_api("responses")
    agents.set_default_openai_client(AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0),
                                     use_for_tracing=False)
    yield
    _openai_shared.set_default_openai_client(before)  # type: ignore[arg-type]


def test_an_agent_calls_its_tool_and_answers(server, default_client) -> None:
    calls: list[str] = []

    @agents.function_tool(is_enabled=lambda ctx, agent: not calls)
    def get_weather(city: Literal["Paris", "Rome"]) -> str:
        """The weather in a city."""
        calls.append(city)
        return f"Sunny, 24 degrees in {city}."

    agent = agents.Agent(name="forecaster", instructions="Answer with the weather.", model=MODEL,
                         tools=[get_weather], output_type=Forecast,
                         model_settings=agents.ModelSettings(tool_choice="required", temperature=0, max_tokens=160))
    result = agents.Runner.run_sync(agent, "What is the weather in Paris?")

    (city,) = calls  # called once, with the argument the SDK parsed from the server's JSON
    assert city in ("Paris", "Rome") and isinstance(result.final_output, Forecast)
    first, last = result.raw_responses
    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather" and json.loads(call.arguments) == {"city": city}
    (message,) = last.output
    assert message.type == "message" and result.final_output == Forecast.model_validate_json(message.content[0].text)
    with server.http() as http:  # what the SDK sent the second time, as the server stored it
        listed = http.get(f"/v1/responses/{last.response_id}/input_items", params={"order": "asc"})
    assert listed.status_code == 200, listed.text
    sent = listed.json()["data"]
    assert [i["type"] for i in sent] == ["message", "function_call", "function_call_output"]
    assert sent[1]["call_id"] == sent[2]["call_id"] == call.call_id
    assert sent[2]["output"] == f"Sunny, 24 degrees in {city}."
