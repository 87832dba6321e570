"""The Responses `file_search` tool over tailorlm's vector stores: search them with the user's question, ground
the answer in what was found as a preset's knowledge is (presets/grounding.py), and cite the files it used."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tailorlm.errors import InvalidRequestError
from tailorlm.presets import grounding
from tailorlm.presets.grounding import Source
from tailorlm.server.knowledge import Knowledge
from tailorlm.server.serving.response_items import item_id

RESULTS = "file_search_call.results"
CITE = re.compile(r"\[(\d+)\]")


@dataclass
class FileSearch:
    item: dict[str, Any]  # the file_search_call output item
    sources: list[Source]  # numbered as the prompt shows them


def _limit(tool: dict[str, Any], i: int) -> int:
    k = tool.get("max_num_results", 10)
    if not isinstance(k, int) or not 1 <= k <= 50:
        raise InvalidRequestError(f"'tools[{i}].max_num_results' must be an integer from 1 to 50.",
                                  param=f"tools[{i}].max_num_results")
    return k


def search(kn: Knowledge, tools: list[dict[str, Any]], query: str, include_results: bool) -> FileSearch:
    """Every file_search tool's stores searched (plain function: run it off the event loop); the best
    `max_num_results` chunks of each tool, at or above its score threshold, best first."""
    sources: list[Source] = []
    for i, tool in enumerate(tools):
        k = _limit(tool, i)
        threshold = (tool.get("ranking_options") or {}).get("score_threshold") or 0.0
        found = []
        if query.strip():
            for store_id in tool["vector_store_ids"]:
                kb = kn.kbs.usable(store_id)
                found += [(kb, hit) for hit in kn.kbs.search(kb.id, query, k=k, filters=tool.get("filters"))]
        found.sort(key=lambda pair: pair[1].score, reverse=True)
        sources += [grounding.source(len(sources) + n + 1, kb, hit)
                    for n, (kb, hit) in enumerate(p for p in found[:k] if p[1].score >= threshold)]
    results = [{"file_id": s.file_id, "filename": s.filename, "text": s.text, "score": min(max(s.score, 0.0), 1.0),
                "attributes": s.attributes or {}} for s in sources]
    item = {"id": item_id("fs"), "type": "file_search_call", "status": "completed", "queries": [query],
            "results": results if include_results else None}
    return FileSearch(item, sources)


def citations(text: str, sources: list[Source]) -> list[dict[str, Any]]:
    """file_citation annotations: one after each `[n]` the answer cites; if it cites none by number, one per file
    it was grounded in, at its end. `index` is the character offset in `text` the citation belongs to."""
    by_number = {s.index: s for s in sources}
    cited = [(m.end(), by_number[int(m.group(1))]) for m in CITE.finditer(text) if int(m.group(1)) in by_number]
    if not cited:
        files = {s.file_id: s for s in sources}
        cited = [(len(text), s) for s in files.values()]
    return [{"type": "file_citation", "file_id": s.file_id, "filename": s.filename, "index": at} for at, s in cited]
