"""Model names: the one gate every user-supplied name passes before it touches the filesystem."""

from __future__ import annotations

import re
from pathlib import Path

from tailorlm.errors import InvalidRequestError

# One optional "org/" prefix, then a name; no "..", no "--" (the folder separator), no absolute paths.
_NAME = re.compile(r"[a-z0-9][a-z0-9._:-]*(/[a-z0-9][a-z0-9._:-]*)?")
_MAX_LEN = 200


def validate_name(name: str, what: str = "model") -> str:
    """Return `name` lower-cased, or raise InvalidRequestError if it could escape the store.

    `what` names the kind of thing in the message ("model", "knowledge base")."""
    cleaned = name.strip().lower()
    if (
        not cleaned
        or len(cleaned) > _MAX_LEN
        or ".." in cleaned
        or "--" in cleaned
        or not _NAME.fullmatch(cleaned)
    ):
        raise InvalidRequestError(
            f"invalid {what} name {name!r}: use lower-case letters, digits and . _ : - "
            "with at most one '/' (as in org/name), and no '..' or '--'",
            param="name",
        )
    return cleaned


def folder_for(name: str) -> str:
    """The folder a (validated) name is stored in: "org/name" becomes "org--name"."""
    return validate_name(name).replace("/", "--")


def name_from_path(path: Path) -> str:
    """A valid default name derived from a file or folder name (e.g. "SmolLM2.Q4_1.gguf" -> "smollm2.q4_1")."""
    stem = path.stem if path.is_file() else path.name
    cleaned = re.sub(r"[^a-z0-9._:-]+", "-", stem.lower())
    cleaned = re.sub(r"-{2,}", "-", re.sub(r"\.{2,}", ".", cleaned)).strip("-._:")
    return cleaned[:_MAX_LEN] or "model"
