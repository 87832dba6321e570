"""Token counts of a training example, rendered with the model's chat template as at serving time."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tailorlm.chat import TextTokenizer, render_chat
from tailorlm.tune.data_preference import OUTPUTS, pair_messages


def assistant_spans(tok: TextTokenizer, messages: list[Mapping[str, Any]],
                    tools: list[dict] | None = None) -> tuple[list[int], list[tuple[int, int]]]:
    """The example's token ids and the [start, end) spans of its trained assistant turns (weight != 0).

    A span runs from the end of the prompt that asks for that turn (the history with the
    generation prompt) to the end of the history including it, so it covers the assistant's
    text and its end-of-turn token, as the model must produce them when served.
    """
    ids = render_chat(tok, messages, add_generation_prompt=False, tools=tools)
    spans: list[tuple[int, int]] = []
    for i, m in enumerate(messages):
        if m.get("role") != "assistant" or m.get("weight", 1) == 0:
            continue
        start = len(render_chat(tok, messages[:i], add_generation_prompt=True, tools=tools)) if i else 0
        end = len(render_chat(tok, messages[: i + 1], add_generation_prompt=False, tools=tools))
        if end > start:
            spans.append((start, min(end, len(ids))))
    return ids, spans


def count_chat(tok: TextTokenizer, data: Mapping[str, Any]) -> tuple[int, int, int]:
    """(total, trainable, longest sequence) tokens of a chat example."""
    ids, spans = assistant_spans(tok, data["messages"], data.get("tools"))
    return len(ids), sum(end - start for start, end in spans), len(ids)


def completion_ids(tok: TextTokenizer, data: Mapping[str, Any]) -> tuple[list[int], list[int]]:
    """Prompt ids (with the model's BOS convention) and completion ids, ending with EOS so it learns to stop."""
    prompt = tok.encode(data["prompt"], add_special_tokens=True)
    completion = tok.encode(data["completion"], add_special_tokens=False)
    return prompt, completion + tok.eos_token_ids[:1]


def count_completion(tok: TextTokenizer, data: Mapping[str, Any]) -> tuple[int, int, int]:
    """(total, trainable, longest) tokens of a prompt/completion example: only the completion is trained."""
    prompt, completion = completion_ids(tok, data)
    return len(prompt) + len(completion), len(completion), len(prompt) + len(completion)


def count_preference(tok: TextTokenizer, data: Mapping[str, Any]) -> tuple[int, int, int]:
    """(total, trainable, longest) tokens of a preference pair: both sides, each rendered as a chat example."""
    sides = [count_chat(tok, pair_messages(data, key)) for key in OUTPUTS]
    return sum(s[0] for s in sides), sum(s[1] for s in sides), max(s[0] for s in sides)
