"""The plan of one chat: how its messages are rendered to prompt ids, how the output is constrained and
parsed, and which tokens stop it — per model family (harmony for gpt-oss, the chat template for the rest)
and per feature (tools, response format). The API and the CLI both plan here, so a conversation renders
to the same prompt ids wherever it is sent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tailorlm.chat.output import OutputParser, PlainParser
from tailorlm.chat.template import render_chat
from tailorlm.chat.tokenizer import TextTokenizer

if TYPE_CHECKING:
    from tailorlm.engine.types import TokenConstraint

HARMONY_MODEL_TYPES = ("gpt_oss",)


@dataclass
class ChatPlan:
    """How one chat request is rendered, constrained and parsed."""

    prompt: list[int]
    parser: Callable[[], OutputParser] = PlainParser
    constraint: Callable[[], TokenConstraint | None] = lambda: None
    stop_token_ids: list[int] = field(default_factory=list)


@dataclass
class ChatOptions:
    """What besides the messages shapes a chat's plan (the OpenAI request fields of the same names)."""

    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    reasoning_effort: str | None = None
    response_format: Mapping[str, Any] | None = None


def plan_chat(tokenizer: TextTokenizer, model_type: str, messages: Sequence[Mapping[str, Any]],
              options: ChatOptions | None = None) -> ChatPlan:
    """Choose rendering and parsing: harmony for gpt-oss, tool conventions, structured output."""
    o = options or ChatOptions()
    if model_type in HARMONY_MODEL_TYPES:
        from tailorlm.chat import harmony

        return ChatPlan(**harmony.plan(tokenizer, messages, o.tools, o.tool_choice, o.reasoning_effort,
                                       o.response_format))
    from tailorlm.chat import structured

    answer = structured.answer_schema(o.response_format) if o.response_format else None
    if o.tools and o.tool_choice != "none":  # the tools' grammar holds the answer's schema too
        from tailorlm.chat import tools

        return ChatPlan(**tools.plan(tokenizer, messages, o.tools, o.tool_choice,
                                     parallel_tool_calls=o.parallel_tool_calls, answer=answer))
    plan = ChatPlan(prompt=render_chat(tokenizer, list(messages), add_generation_prompt=True))
    if answer is not None:
        plan.constraint = structured.json_schema_constraint(tokenizer, answer)
    return plan
