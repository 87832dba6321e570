"""Text extraction per format: a file becomes blocks (headings and paragraphs) in reading order.

The extracted text is the blocks joined by blank lines; chunk offsets point into that text.
Heavy parsers (pypdf, python-docx, beautifulsoup4) are imported only for their own format.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from tailorlm.errors import InvalidRequestError

SEPARATOR = "\n\n"
_MD_HASHES = re.compile(r"(#{1,6})\s")  # an ATX heading's opening: 1-6 '#' and a space (anchored by match())
_BLANK = re.compile(r"\n\s*\n")


@dataclass(frozen=True)
class Block:
    """A heading (level 1..6) or a paragraph (level 0)."""

    text: str
    level: int = 0


class ExtractionError(InvalidRequestError):
    """A file could not be read as text (unknown format, damaged, or empty)."""

    code = "extraction_failed"


def extract(path: Path) -> list[Block]:
    """The blocks of `path`, by its suffix; ExtractionError if there is no text to index."""
    suffix = path.suffix.lower()
    reader = _READERS.get(suffix)
    if reader is None:
        raise ExtractionError(f"{path.name}: unsupported format {suffix or '(none)'}; "
                              f"supported: {', '.join(sorted(_READERS))}")
    try:
        blocks = [b for b in reader(path) if b.text.strip()]
    except ExtractionError:
        raise
    except Exception as exc:  # each parser raises its own types for damaged files
        raise ExtractionError(f"{path.name}: cannot read it as {suffix[1:]}: {exc}") from None
    if not any(b.level == 0 for b in blocks):
        raise ExtractionError(f"{path.name}: no text found to index")
    return blocks


def joined(blocks: list[Block]) -> str:
    """The extracted text that chunk offsets refer to."""
    return SEPARATOR.join(b.text for b in blocks)


def paragraphs(text: str) -> list[Block]:
    return [Block(p.strip()) for p in _BLANK.split(text.replace("\r\n", "\n")) if p.strip()]


def _heading(line: str) -> Block | None:
    """An ATX heading line as a Block, in linear time: a document is user input, and a backtracking pattern over
    a heading's trailing spaces (the usual `(.*?)\\s*#*\\s*$`) takes quadratic time on a line of spaces.

    The closing '#'s are dropped only where a space precedes them, as CommonMark says ("# C#" is "C#").
    """
    opening = _MD_HASHES.match(line)
    if opening is None:
        return None
    text = line[len(opening.group(1)):].strip()
    unclosed = text.rstrip("#")
    if not unclosed or unclosed[-1].isspace():
        text = unclosed.rstrip()
    return Block(text, len(opening.group(1)))


def markdown_blocks(text: str) -> list[Block]:
    """ATX headings (# …) start blocks; paragraphs split on blank lines; fenced code stays whole."""
    blocks: list[Block] = []
    para: list[str] = []
    fenced = False

    def flush() -> None:
        text = "\n".join(para).strip()
        if text:  # blank lines outside fences were split on already; inside a fence they belong to it
            blocks.append(Block(text))
        para.clear()

    for line in text.replace("\r\n", "\n").split("\n"):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        heading = None if fenced else _heading(line)
        if heading:
            flush()
            blocks.append(heading)
        elif not fenced and not line.strip():
            flush()
        else:
            para.append(line)
    flush()
    return blocks


def _read_text(path: Path) -> str:
    return path.read_bytes().decode("utf-8", errors="replace")


def _txt(path: Path) -> list[Block]:
    return paragraphs(_read_text(path))


def _md(path: Path) -> list[Block]:
    return markdown_blocks(_read_text(path))


def _html(path: Path) -> list[Block]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(path.read_bytes(), "html.parser")
    for tag in soup(["script", "style", "noscript", "template", "head"]):
        tag.decompose()
    blocks: list[Block] = []
    tags = ["h1", "h2", "h3", "h4", "h5", "h6", "p", "li", "pre", "blockquote", "td", "th", "dt", "dd"]
    for el in soup.find_all(tags):
        if el.find_parent(tags[6:]) is not None:  # nested in a block already taken whole
            continue
        text = " ".join(el.get_text(" ").split()) if el.name != "pre" else el.get_text()
        level = int(el.name[1]) if el.name[0] == "h" and el.name[1:].isdigit() else 0
        blocks.append(Block(text, level))
    if not blocks:  # a page of bare text in <div>s
        blocks = paragraphs(soup.get_text("\n\n"))
    return blocks


def _pdf(path: Path) -> list[Block]:
    from pypdf import PdfReader

    blocks: list[Block] = []
    for page in PdfReader(path).pages:
        blocks.extend(paragraphs(page.extract_text() or ""))
    return blocks


# A .docx is a zip: its parts are inflated whole, in memory, by the parser. A small file can declare gigabytes
# (a zip bomb), so the central directory is checked first: the sizes it declares, and how far they inflate.
MAX_ZIP_BYTES = 256 * 2**20  # inflated parts of one document
MAX_ZIP_RATIO = 200  # inflated / compressed, for parts past 1 MiB (real Word XML inflates about 5-20x)


def check_zip(path: Path) -> None:
    """ExtractionError if the zip at `path` would inflate beyond MAX_ZIP_BYTES or past MAX_ZIP_RATIO."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            parts = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ExtractionError(f"{path.name}: not a readable .docx (zip) file: {exc}") from None
    total = sum(p.file_size for p in parts)
    if total > MAX_ZIP_BYTES:
        raise ExtractionError(f"{path.name}: its parts inflate to {total:,} bytes, more than the "
                              f"{MAX_ZIP_BYTES:,} a document may (a zip bomb, or not a text document)")
    for p in parts:
        if p.file_size > 2**20 and p.file_size > MAX_ZIP_RATIO * max(p.compress_size, 1):
            raise ExtractionError(f"{path.name}: part {p.filename} inflates {p.file_size // max(p.compress_size, 1)}x, "
                                  "more than a document does (a zip bomb)")


def _docx(path: Path) -> list[Block]:
    import docx

    check_zip(path)
    blocks: list[Block] = []
    for para in docx.Document(str(path)).paragraphs:
        style = (para.style.name if para.style is not None else "") or ""
        level = 0
        if style == "Title":
            level = 1
        elif style.startswith("Heading"):
            level = int(style.split()[-1]) if style.split()[-1].isdigit() else 1
        blocks.append(Block(para.text.strip(), level))
    return blocks


def _jsonl(path: Path) -> list[Block]:
    """One paragraph per line: its "text" or "content", a chat's messages, or else the JSON itself."""
    blocks: list[Block] = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ExtractionError(f"{path.name}: line {number} is not JSON: {exc.msg}") from None
        blocks.append(Block(_record_text(record)))
    return blocks


def _record_text(record: object) -> str:
    if isinstance(record, dict):
        for key in ("text", "content"):
            if isinstance(record.get(key), str):
                return record[key]
        if isinstance(record.get("messages"), list):
            return "\n".join(f"{m.get('role', '')}: {m.get('content') or ''}" for m in record["messages"]
                             if isinstance(m, dict))
    return record if isinstance(record, str) else json.dumps(record, ensure_ascii=False)


_READERS = {".txt": _txt, ".text": _txt, ".md": _md, ".markdown": _md, ".html": _html, ".htm": _html,
            ".pdf": _pdf, ".docx": _docx, ".jsonl": _jsonl}
