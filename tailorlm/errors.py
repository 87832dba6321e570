"""One exception hierarchy for the whole package.

Every error a user can cause is a `TailorError`; the CLI prints its message as one
line and exits non-zero, and the API maps `status` and `code` onto OpenAI's error object
(tailorlm/server/errors.py). Anything else escaping is a bug.
"""

from __future__ import annotations


class TailorError(Exception):
    """Base class: `message` is a complete sentence meant for the user."""

    status: int = 400
    code: str = "invalid_request"
    type: str = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidRequestError(TailorError):
    """A parameter is out of range or malformed; `param` names it."""


class NotFoundError(TailorError):
    """An unknown model, adapter, file or other named resource."""

    status = 404
    code = "not_found"


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"

    def __init__(self, message: str, *, param: str | None = "model") -> None:
        super().__init__(message, param=param)


class AlreadyExistsError(TailorError):
    status = 409
    code = "already_exists"


class PermissionDeniedError(TailorError):
    """The request is understood but not allowed for this resource."""

    status = 403
    code = "insufficient_permissions"


class InUseError(TailorError):
    """Something still needed by unfinished work cannot be removed."""

    status = 409
    code = "in_use"


class ContextOverflowError(InvalidRequestError):
    """Prompt plus requested tokens exceed the model's context window."""

    code = "context_length_exceeded"

    def __init__(self, prompt_tokens: int, max_tokens: int, context_length: int) -> None:
        super().__init__(
            f"This model's maximum context length is {context_length} tokens, but the request needs "
            f"{prompt_tokens + max_tokens} ({prompt_tokens} in the prompt + {max_tokens} to generate). "
            "Shorten the prompt or lower max_tokens.",
            param="max_tokens",
        )
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.context_length = context_length


class IntegrityError(TailorError):
    """A stored file does not match the digest recorded in its manifest."""

    status = 500
    code = "integrity_error"
    type = "server_error"


class UnsafeFormatError(TailorError):
    """Weights in a format that can execute code (pickle) were refused."""

    code = "unsafe_weights"


class UnsafeLinkError(TailorError):
    """A file of an imported folder is a link that leads out of it."""

    code = "unsafe_link"


class UnsupportedModelError(TailorError):
    code = "unsupported_model"


class BackendMissingError(TailorError):
    """An optional inference backend (llama.cpp, onnxruntime) is not installed."""

    status = 501
    code = "backend_not_installed"
    type = "server_error"


class NoChatTemplateError(InvalidRequestError):
    code = "no_chat_template"


class OfflineError(TailorError):
    """A remote resource (the model hub) could not be reached."""

    status = 503
    code = "offline"
    type = "server_error"


class QueueFullError(TailorError):
    """Too many requests are waiting; the client should retry after `retry_after` seconds."""

    status = 429
    code = "queue_full"
    type = "rate_limit_error"

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class AuthenticationError(TailorError):
    status = 401
    code = "invalid_api_key"
    type = "invalid_request_error"


class PayloadTooLargeError(TailorError):
    status = 413
    code = "request_too_large"
