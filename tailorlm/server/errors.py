"""One place that maps errors to OpenAI's error object: typed errors, validation, unknown routes, faults."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tailorlm.errors import QueueFullError, TailorError

log = logging.getLogger("tailorlm.server")


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def internal_error_body() -> dict:
    """What a client is told of a bug (the log has the traceback)."""
    return error_body("The server had an internal error while processing your request.", "server_error", None,
                      "internal_error")


# An absolute path in a message (a damaged blob under the store, a model's import source) tells a client how the
# server's disk is laid out; server errors name the file only (the log keeps the whole message).
_ABSOLUTE_PATH = re.compile(r"(?<![\w.])/(?:[^\s/'\"()<>]+/)+([^\s/'\"()<>,;:]+)")


def redact_paths(message: str) -> str:
    return _ABSOLUTE_PATH.sub(r"\1", message)


def error_response(exc: TailorError) -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, QueueFullError) else None
    message = exc.message
    if exc.status >= 500:
        log.error("%s (%s)", message, exc.code)
        message = redact_paths(message)
    return JSONResponse(error_body(message, exc.type, exc.param, exc.code), status_code=exc.status, headers=headers)


def validation_response(errors: Sequence[Any]) -> JSONResponse:
    """A request body that does not validate (FastAPI's RequestValidationError, or pydantic's ValidationError for
    a batch line's body): a 400 naming the first wrong field."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in first.get("loc", ())]
    if loc and loc[0] in ("body", "query", "path", "header"):  # where it came from; `param` names the field
        loc = loc[1:]
    param = ".".join(loc) or None
    if first.get("type") == "json_invalid":
        message = "We could not parse the JSON body of your request."
    else:
        message = f"Invalid value for {param or 'the request'}: {first.get('msg')}."
    return JSONResponse(error_body(message, "invalid_request_error", param, "invalid_value"), status_code=400)


def install(app: FastAPI) -> None:
    @app.exception_handler(TailorError)
    async def _tailor(_: Request, exc: TailorError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_response(exc.errors())

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"Unknown request URL: {request.method} {request.url.path}."
            return JSONResponse(error_body(message, "invalid_request_error", None, "unknown_url"), status_code=404)
        if exc.status_code == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}."
            return JSONResponse(error_body(message, "invalid_request_error", None, "method_not_allowed"), status_code=405)
        return JSONResponse(error_body(str(exc.detail), "invalid_request_error"), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _fault(_: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")
        return JSONResponse(internal_error_body(), status_code=500)
