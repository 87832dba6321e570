"""ASGI middleware: body size limit (413), API keys on /v1 (401), request metrics."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tailorlm.config import Settings
from tailorlm.errors import AuthenticationError, PayloadTooLargeError, TailorError
from tailorlm.server.errors import error_body
from tailorlm.server.state import ServerState


async def _send_error(send: Send, exc: TailorError) -> None:
    body = json.dumps(error_body(exc.message, exc.type, exc.param, exc.code)).encode()
    await send({"type": "http.response.start", "status": exc.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


UPLOAD_FRAMING_BYTES = 64 * 1024  # multipart boundaries, part headers and the small form fields


# Beyond /v1, what tells an outsider about the server (its models and traffic, its whole API) needs a key too
KEYED_EXTRAS = frozenset({"/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})


def body_limit(settings: Settings, scope: Scope) -> tuple[int, str]:
    """File uploads are limited by `max_upload_bytes` (the file part itself is checked exactly as it
    streams to disk); every other body by `max_body_bytes`."""
    if scope["path"] == "/v1/files" and scope["method"] == "POST":
        return settings.max_upload_bytes + UPLOAD_FRAMING_BYTES, "max_upload_bytes"
    return settings.max_body_bytes, "max_body_bytes"


class GuardMiddleware:
    """Runs before routing: refuses oversized bodies and missing or wrong API keys, counts requests."""

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = {"code": 500}

        async def send_tracking(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self._guarded(scope, receive, send_tracking)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            self.state.metrics.requests.labels(label, str(status["code"])).inc()

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit, setting = body_limit(self.state.settings, scope)
        headers = dict(scope.get("headers") or [])
        too_large = PayloadTooLargeError(
            f"The request body is larger than this server accepts ({limit} bytes; see the {setting} setting).")
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _send_error(send, too_large)
            return
        path = scope["path"]
        if path.startswith("/v1") or (path in KEYED_EXTRAS and not self.state.settings.public_metrics):
            try:
                auth = headers.get(b"authorization")
                self.state.keys.check(auth.decode("latin-1") if auth else None)
            except AuthenticationError as exc:
                await _send_error(send, exc)
                return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge()
            return message

        async def send_once(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, send_once)
        except _TooLarge:
            if not started:
                await _send_error(send, too_large)
