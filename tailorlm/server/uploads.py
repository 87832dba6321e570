"""POST /v1/files bodies: multipart/form-data parsed as it arrives, the `file` part written straight
into a FileStore upload (hashed and size-checked on the way), never held in memory or spooled twice."""

from __future__ import annotations

import asyncio

from fastapi import Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

from tailorlm.errors import InvalidRequestError
from tailorlm.files import UPLOAD_PURPOSES, FileStore, StoredFile, Upload, check_purpose

FEED_BYTES = 1024 * 1024  # body bytes handed to the parsing thread at a time
MAX_FIELD_BYTES = 4096
MAX_FIELDS = 16


class MultipartUpload:
    """One multipart body: the part named `file` streams into `files`; other parts are small fields."""

    def __init__(self, files: FileStore, content_type: str) -> None:
        kind, params = parse_options_header(content_type)
        if kind != b"multipart/form-data" or not params.get(b"boundary"):
            raise InvalidRequestError("POST /v1/files takes a multipart/form-data body with `file` and `purpose`")
        self.files = files
        self.fields: dict[str, str] = {}
        self.upload: Upload | None = None
        self._headers: dict[bytes, bytes] = {}
        self._name = self._value = b""
        self._field_name = ""
        self._field: bytearray | None = None  # the field being read; None while in the file part
        self.parser = MultipartParser(params[b"boundary"], callbacks={
            "on_part_begin": self._part_begin, "on_header_field": self._header_field,
            "on_header_value": self._header_value, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        })

    # -- parser callbacks (python-multipart hands over slices of the fed buffer) -----------------
    def _part_begin(self) -> None:
        self._headers.clear()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._name.lower()] = self._value
        self._name = self._value = b""

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        if name != "file":
            if len(self.fields) >= MAX_FIELDS:
                raise InvalidRequestError(f"too many form fields (at most {MAX_FIELDS})")
            self._field_name, self._field = name, bytearray()
            return
        if self.upload is not None:
            raise InvalidRequestError("send one `file` per request", param="file")
        if "purpose" in self.fields:  # sent first, as clients do: refuse a bad one before the bytes
            check_purpose(self.fields["purpose"], UPLOAD_PURPOSES)
        filename = params.get(b"filename")
        self.upload = self.files.upload(filename.decode("utf-8", "replace") if filename is not None else None)
        self._field = None

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._field is None:
            assert self.upload is not None
            self.upload.write(data[start:end])
            return
        self._field += data[start:end]
        if len(self._field) > MAX_FIELD_BYTES:
            raise InvalidRequestError(f"form field {self._field_name!r} is longer than {MAX_FIELD_BYTES} bytes",
                                      param=self._field_name)

    def _part_end(self) -> None:
        if self._field is not None:
            self.fields[self._field_name] = self._field.decode("utf-8", "replace")

    # -- driving --------------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        try:
            self.parser.write(data)
        except MultipartParseError as exc:
            raise InvalidRequestError(f"the multipart body is malformed: {exc}") from None

    def finish(self) -> StoredFile:
        """Check the body was complete and had both parts, then commit the file."""
        if self.parser.state != MultipartState.END:
            raise InvalidRequestError("the multipart body ended before its closing boundary")
        if self.upload is None:
            raise InvalidRequestError("the form has no `file` part", param="file")
        purpose = check_purpose(self.fields.get("purpose"), UPLOAD_PURPOSES)
        return self.upload.commit(purpose)

    def close(self) -> None:
        """Remove the temporary blob of an upload that was not committed."""
        if self.upload is not None:
            self.upload.__exit__(None, None, None)


async def receive_upload(request: Request, files: FileStore) -> StoredFile:
    """Stream the request body into `files`; parsing and disk writes run off the event loop."""
    form = MultipartUpload(files, request.headers.get("content-type", ""))
    try:
        pending = bytearray()
        async for chunk in request.stream():
            pending += chunk
            if len(pending) >= FEED_BYTES:
                await asyncio.to_thread(form.feed, bytes(pending))
                pending.clear()
        await asyncio.to_thread(form.feed, bytes(pending))
        return await asyncio.to_thread(form.finish)
    finally:
        form.close()
