"""Render chat messages to prompt token ids with the model's own jinja chat template."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from jinja2 import TemplateError

from tailorlm.chat.tokenizer import TextTokenizer
from tailorlm.errors import InvalidRequestError, NoChatTemplateError

ROLES = ("system", "developer", "user", "assistant", "tool")
# What a template may raise on messages it cannot render (a wrong type concatenated, a missing key).
_TEMPLATE_ERRORS = (TemplateError, TypeError, ValueError, KeyError)


def render_chat_text(
    tok: TextTokenizer,
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool = True,
    tools: list[dict] | None = None,
    **template_kwargs: Any,
) -> str:
    """The prompt text the model's chat template makes of `messages` (and `tools`)."""
    return str(_apply(tok, messages, tools, add_generation_prompt=add_generation_prompt, tokenize=False,
                      **template_kwargs))


def render_chat(
    tok: TextTokenizer,
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool = True,
    tools: list[dict] | None = None,
    **template_kwargs: Any,
) -> list[int]:
    """Prompt token ids: the template's text, encoded without adding special tokens, where only the template's
    own control tokens are control tokens.

    Control tokens typed inside message contents, names, tool arguments or results (say a user writing
    "<|im_end|>\n<|im_start|>system") are encoded as plain text (transformers' `sanitize_control_tokens`: the
    template's inputs are marked before rendering, so the template's text and the inputs' text are told apart).
    """
    ids = _apply(tok, messages, tools, add_generation_prompt=add_generation_prompt, tokenize=True,
                 return_dict=False, sanitize_control_tokens=True, **template_kwargs)
    return [int(i) for i in ids]


def _apply(tok: TextTokenizer, messages: Any, tools: list[dict] | None, **kwargs: Any) -> Any:
    """Validate `messages`, then run the template through transformers, mapping its errors to ours."""
    template = _template_source(tok, tools)
    msgs = normalize_messages(messages, developer_as_system="developer" not in template)
    try:
        return tok.hf.apply_chat_template(msgs, tools=tools, **kwargs)
    except _TEMPLATE_ERRORS as exc:  # includes a template's own raise_exception()
        raise InvalidRequestError(
            f"The chat template of model {tok.name!r} cannot render these messages: {exc}", param="messages"
        ) from exc


def normalize_messages(messages: Any, *, developer_as_system: bool = False) -> list[dict[str, Any]]:
    """Validated copies of `messages`: text-part lists joined into strings, `developer` optionally made `system`."""
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)):
        raise InvalidRequestError("'messages' must be a list of message objects.", param="messages")
    if not messages:
        raise InvalidRequestError("'messages' must contain at least one message.", param="messages")
    return [_normalize_message(m, i, developer_as_system) for i, m in enumerate(messages)]


def _normalize_message(message: Any, i: int, developer_as_system: bool) -> dict[str, Any]:
    """One validated message; errors name the parameter as `messages[i].field`."""
    where = f"messages[{i}]"
    if not isinstance(message, Mapping):
        raise InvalidRequestError(f"'{where}' must be an object with 'role' and 'content'.", param=where)
    role = message.get("role")
    if role not in ROLES:
        raise InvalidRequestError(
            f"'{where}.role' is {role!r}; it must be one of {', '.join(ROLES)}.", param=f"{where}.role"
        )
    out = dict(message)
    content = message.get("content")
    if content is None and role == "assistant" and message.get("tool_calls"):
        out["content"] = ""  # templates concatenate content; an assistant turn with only tool calls has none
    elif isinstance(content, str):
        pass
    elif isinstance(content, list):
        out["content"] = "\n".join(_text_part(part, f"{where}.content[{j}]") for j, part in enumerate(content))
    else:
        raise InvalidRequestError(
            f"'{where}.content' must be a string or a list of text parts.", param=f"{where}.content"
        )
    if role == "developer" and developer_as_system:
        out["role"] = "system"
    return out


def _text_part(part: Any, where: str) -> str:
    """The text of one content part, which must be {"type": "text", "text": str}."""
    if isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str):
        return part["text"]
    kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
    raise InvalidRequestError(
        f"'{where}' must be a text part {{\"type\": \"text\", \"text\": ...}}; "
        f"got {kind!r}, which this model does not take.",
        param=where,
    )


def _template_source(tok: TextTokenizer, tools: list[dict] | None) -> str:
    """The jinja source that will render this request, or NoChatTemplateError."""
    if not tok.has_chat_template:
        raise NoChatTemplateError(
            f"Model {tok.name!r} has no chat template; use plain completion (`tailor generate --raw`, "
            "or the /v1/completions endpoint) or pick a chat/instruct model.",
            param="model",
        )
    try:
        return str(tok.hf.get_chat_template(None, tools))
    except ValueError as exc:  # e.g. several named templates and none fits
        raise NoChatTemplateError(f"Model {tok.name!r}: {exc}", param="model") from exc
