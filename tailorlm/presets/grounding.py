"""Retrieval for a preset's chat: search its knowledge bases with the user's question, number what was
found, and put it in a system message that asks the model to cite it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from tailorlm.errors import NotFoundError
from tailorlm.presets.preset import Preset

INSTRUCTION = ("Answer the question using the numbered sources below. Cite the sources you use by their number in "
               "square brackets, like [1]. If the sources do not contain the answer, say that you do not know.")


class Source(BaseModel):
    """One retrieved chunk, as returned to the client (`sources` on the chat completion)."""

    index: int  # the number the answer cites, [index]
    knowledge_base: str
    knowledge_base_id: str
    file_id: str
    filename: str
    chunk_id: str
    position: int
    start: int | None = None
    end: int | None = None
    heading: str | None = None
    score: float
    text: str
    attributes: dict[str, Any] | None = None


def message_text(message: dict[str, Any]) -> str:
    """The text of a chat message whose content is a string or a list of content parts."""
    content = message.get("content")
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return content or ""


def last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return message_text(message)
    return ""


def retrieve(kbs: Any, preset: Preset, query: str) -> list[Source]:
    """Search every knowledge base of `preset` (KnowledgeBases `kbs`); a missing one is a 404, never skipped."""
    if not query.strip():
        return []
    sources: list[Source] = []
    for ref in preset.knowledge:
        try:
            kb = kbs.get(ref.name)
        except NotFoundError:
            raise NotFoundError(f"knowledge base {ref.name} of preset {preset.ref} does not exist",
                                param="model") from None
        for hit in kbs.search(kb.id, query, k=ref.k, mode=ref.mode, filters=ref.filters):
            sources.append(source(len(sources) + 1, kb, hit))
    return sources


def source(index: int, kb: Any, hit: Any) -> Source:
    """Search hit `hit` (tailorlm.kb Hit) of knowledge base `kb`, numbered `index`."""
    return Source(index=index, knowledge_base=kb.name, knowledge_base_id=kb.id, file_id=hit.file_id,
                  filename=hit.filename, chunk_id=str(hit.chunk_id), position=hit.position, start=hit.start,
                  end=hit.end, heading=hit.heading, score=float(hit.score), text=hit.text,
                  attributes=hit.attributes or None)


def system_prompt(system: str | None, sources: list[Source]) -> str | None:
    """The one leading system message: the instructions, then (if anything was found) the numbered sources."""
    if not sources:
        return system
    blocks = [f"[{s.index}] {s.filename}" + (f" — {s.heading}" if s.heading else "") + f"\n{s.text.strip()}"
              for s in sources]
    parts = [system] if system else []
    parts += [INSTRUCTION, "Sources:\n\n" + "\n\n".join(blocks)]
    return "\n\n".join(parts)


def apply(preset: Preset, messages: list[dict[str, Any]], sources: list[Source]) -> list[dict[str, Any]]:
    """`messages` with the preset's system prompt and the sources. A system message of the request's own is
    added after the preset's (`client_system: append`, the default) or replaces it (`replace`): never silently.

    One leading system message, because many chat templates accept no other.
    """
    return with_sources(messages, sources, preset.system, preset.client_system)


def with_sources(messages: list[dict[str, Any]], sources: list[Source], system: str | None = None,
                 client_system: str = "append") -> list[dict[str, Any]]:
    """`messages` with one leading system message: `system`, then their own system message if they have one
    (after it; instead of it with `client_system` "replace"), then the numbered sources."""
    rest = list(messages)
    if rest and rest[0].get("role") in ("system", "developer"):
        own = message_text(rest.pop(0))
        system = own if client_system == "replace" or not system else f"{system}\n\n{own}"
    prompt = system_prompt(system, sources)
    return ([{"role": "system", "content": prompt}] if prompt else []) + rest


def ground(kbs: Any, preset: Preset, messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Source]]:
    """`messages` as the preset runs them (its instructions, and sources for the last user question), and
    the sources; `kbs` (KnowledgeBases) is only touched when the preset has knowledge."""
    sources = retrieve(kbs, preset, last_user_text(messages)) if preset.knowledge else []
    return apply(preset, messages, sources), sources
