"""Every record of a bundled knowledge base checked before it is written: the receiving store must read it back.

A record that SQLite accepts can still break the store: attributes that are not a JSON object make every listing
of that base fail, a chunk id near 2^63 exhausts the AUTOINCREMENT sequence for every base after it, a chunk
naming a file of another base points nowhere. The checks mirror what tailorlm/kb/store.py reads back, so what is
imported is what the store could have written itself. Each failure is an IntegrityError naming the member.
"""

from __future__ import annotations

import json
from typing import Any

from tailorlm.errors import IntegrityError

MAX_CHUNK_ID = 2**53  # far above any real store's ids, far below the int64 ceiling of SQLite's AUTOINCREMENT
FILE_STATUSES = ("in_progress", "completed", "failed", "cancelled")


def _fail(member: str, what: str) -> IntegrityError:
    return IntegrityError(f"{member} cannot be imported: {what}")


def _json(value: Any, kind: type, what: str, member: str, *, optional: bool = False) -> None:
    """`value` is JSON text of a `kind` (dict or list), or None where `optional`."""
    if value is None and optional:
        return
    try:
        parsed = json.loads(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if not isinstance(parsed, kind):
        raise _fail(member, f"{what} is not a JSON {kind.__name__}")


def _int(value: Any, what: str, member: str, low: int = 0, high: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        raise _fail(member, f"{what} is {value!r}, not an integer in range")
    return value


def _str(value: Any, what: str, member: str, *, optional: bool = False) -> None:
    if not (isinstance(value, str) and value) and not (optional and value is None):
        raise _fail(member, f"{what} is {value!r}, not a string")


def check_kb(kb: dict[str, Any], member: str) -> None:
    _str(kb.get("id"), "the base's id", member)
    _str(kb.get("embedding_model"), "the base's embedding model", member)
    _int(kb.get("created_at"), "the base's created_at", member)
    _json(kb.get("metadata", "{}"), dict, "the base's metadata", member)
    _json(kb.get("expires_after"), dict, "the base's expires_after", member, optional=True)


def check_files(files: list[Any], member: str) -> set[str]:
    """The ids of the base's files, each record checked; ids must be unique."""
    ids: set[str] = set()
    for i, file in enumerate(files):
        where = f"file {i}"
        if not isinstance(file, dict):
            raise _fail(member, f"{where} is not an object")
        _str(file.get("id"), f"{where}'s id", member)
        if file["id"] in ids:
            raise _fail(member, f"file id {file['id']} appears twice")
        ids.add(file["id"])
        _str(file.get("filename"), f"{where}'s filename", member)
        _str(file.get("sha256"), f"{where}'s sha256", member)
        for key in ("bytes", "chunks", "created_at"):
            _int(file.get(key), f"{where}'s {key}", member)
        if file.get("status") not in FILE_STATUSES:
            raise _fail(member, f"{where}'s status is {file.get('status')!r}")
        _str(file.get("error"), f"{where}'s error", member, optional=True)
        _json(file.get("attributes", "{}"), dict, f"{where}'s attributes", member)
        _json(file.get("chunking"), list, f"{where}'s chunking", member, optional=True)
    return ids


def check_chunk(record: Any, i: int, files: set[str], member: str) -> dict[str, Any]:
    """Chunk `i`'s record without the keys the importer sets itself (id, kb_id, vector)."""
    where = f"chunk {i}"
    if not isinstance(record, dict):
        raise _fail(member, f"{where} is not an object")
    if record.get("file_id") not in files:
        raise _fail(member, f"{where} names file {record.get('file_id')!r}, which the base does not list")
    if not isinstance(record.get("text"), str):
        raise _fail(member, f"{where} has no text")
    if not isinstance(record.get("heading"), (str, type(None))):
        raise _fail(member, f"{where}'s heading is not a string")
    _int(record.get("position"), f"{where}'s position", member)
    start = _int(record.get("start_char"), f"{where}'s start_char", member)
    _int(record.get("end_char"), f"{where}'s end_char", member, low=start)
    return {k: v for k, v in record.items() if k not in ("id", "kb_id", "vector")}


def check_chunk_ids(ids: list[int], member: str) -> None:
    if ids and (min(ids) < 1 or max(ids) >= MAX_CHUNK_ID):
        raise _fail(member, f"chunk ids must lie in 1..{MAX_CHUNK_ID - 1}")
