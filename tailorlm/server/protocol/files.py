"""/v1/files: the file object and its deletion receipt (its list is a pagination.CursorPage)."""

from __future__ import annotations

from typing import Literal

from tailorlm.server.protocol.common import Deletion, OpenAIResponse


class OpenAIFile(OpenAIResponse):
    omit_if_none = frozenset({"expires_at", "status_details"})

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"] = "processed"
    expires_at: int | None = None
    status_details: str | None = None


class DeleteFileResponse(Deletion):
    object: Literal["file"] = "file"
