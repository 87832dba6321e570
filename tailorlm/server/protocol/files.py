"""/v1/files: the file object and its deletion receipt (its list is a pagination.CursorPage)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Self

from tailorlm.server.protocol.common import Deletion, OpenAIResponse

if TYPE_CHECKING:
    from tailorlm.files import StoredFile


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

    @classmethod
    def from_record(cls, f: StoredFile) -> Self:
        return cls(id=f.id, bytes=f.bytes, created_at=f.created_at, filename=f.filename, purpose=f.purpose)


class DeleteFileResponse(Deletion):
    object: Literal["file"] = "file"
