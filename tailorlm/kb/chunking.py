"""Token-aware chunking: sections under one heading are cut into windows of at most `max_tokens`
tokens of the embedding model's tokenizer, ending at a paragraph, line or sentence break where one
falls in the window's second half, and overlapping the previous window by about `overlap` tokens.
A chunk never spans two sections; its heading path ("Guide › Setup") is kept as metadata."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from tailorlm.kb.extract import SEPARATOR, Block, joined

CHUNK_TOKENS = 200  # body tokens; with the heading (HEADING_TOKENS) and [CLS]/[SEP] it fits MiniLM's 256
OVERLAP = 40
HEADING_TOKENS = 32
_SENTENCE_END = (".", "!", "?", ":", ";")


@dataclass(frozen=True)
class Chunk:
    text: str
    start: int  # character offsets in the extracted text
    end: int
    heading: str | None
    position: int  # index within the file
    ids: list[int]  # the body's token ids, no special tokens


def chunk_blocks(blocks: list[Block], tokenizer, *, max_tokens: int = CHUNK_TOKENS,
                 overlap: int = OVERLAP) -> tuple[str, list[Chunk]]:
    """(extracted text, its chunks in reading order)."""
    if not 0 <= overlap < max_tokens:
        raise ValueError(f"overlap ({overlap}) must be below max_tokens ({max_tokens})")
    text = joined(blocks)
    chunks: list[Chunk] = []
    for start, end, heading in _sections(blocks):
        for s, e, ids in _windows(text[start:end], tokenizer, max_tokens, overlap):
            chunks.append(Chunk(text[start + s:start + e], start + s, start + e, heading, len(chunks), ids))
    return text, chunks


def _sections(blocks: list[Block]) -> list[tuple[int, int, str | None]]:
    """(start, end, heading path) of each run of paragraphs between headings."""
    sections: list[list] = []
    stack: list[tuple[int, str]] = []  # (level, heading) of the open headings
    offset, open_section = 0, False
    for block in blocks:
        start, end = offset, offset + len(block.text)
        offset = end + len(SEPARATOR)
        if block.level:
            stack = [h for h in stack if h[0] < block.level] + [(block.level, block.text.strip())]
            open_section = False
        elif open_section:
            sections[-1][1] = end
        else:
            sections.append([start, end, " › ".join(h for _, h in stack) or None])
            open_section = True
    return [tuple(s) for s in sections]  # type: ignore[misc]


def _windows(section: str, tokenizer, max_tokens: int, overlap: int) -> Iterator[tuple[int, int, list[int]]]:
    enc = tokenizer(section, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    ids, offs = enc["input_ids"], enc["offset_mapping"]
    n, s = len(ids), 0
    while s < n:
        e = min(s + max_tokens, n)
        if e < n:
            e = _break(section, offs, s, e, max_tokens)
        yield offs[s][0], offs[e - 1][1], list(ids[s:e])
        if e >= n:
            return
        s = _overlap_start(section, offs, max(e - overlap, s + 1), e, overlap)


def _overlap_start(section: str, offs: list[tuple[int, int]], s: int, e: int, overlap: int) -> int:
    """Start the overlap at a sentence or line if one begins early in it, else at a word, not inside one."""
    for i in range(s, min(e, s + overlap // 2 + 1)):
        gap = section[offs[i - 1][1]:offs[i][0]]
        if "\n" in gap or (gap and section[offs[i - 1][1] - 1] in _SENTENCE_END):
            return i
    while s < e and offs[s][0] > 0 and not section[offs[s][0] - 1].isspace():
        s += 1
    return s


def _break(section: str, offs: list[tuple[int, int]], s: int, e: int, max_tokens: int) -> int:
    """The best end (exclusive token index) in the second half of the window [s, e]."""
    best, best_rank = e, 0
    for i in range(e, s + max_tokens // 2, -1):
        gap = section[offs[i - 1][1]:offs[i][0]]
        if "\n\n" in gap:
            rank = 3
        elif "\n" in gap:
            rank = 2
        elif gap and section[offs[i - 1][1] - 1] in _SENTENCE_END:
            rank = 1
        else:
            continue
        if rank > best_rank:
            best, best_rank = i, rank
        if rank == 3:
            break
    return best
