"""/v1/files: the file object, its list and its deletion receipt."""

from __future__ import annotations

from typing import Literal

from tailorlm.server.protocol.common import CursorListResponse, OpenAIResponse


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


class ListFilesResponse(CursorListResponse[OpenAIFile]):
    pass


class DeleteFileResponse(OpenAIResponse):
    id: str
    object: Literal["file"] = "file"
    deleted: bool
