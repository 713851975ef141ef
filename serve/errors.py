"""HTTP-facing errors: each has a status, a short code and a message that says what is accepted."""
from __future__ import annotations


class ServeError(Exception):
    """Base of errors the service returns as JSON `{"error": message, "code": code}`."""

    status: int = 400
    code: str = "bad_request"

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.headers = headers or {}


class BadRequest(ServeError):
    status, code = 400, "bad_request"


class InvalidTensor(ServeError):
    status, code = 400, "invalid_tensor"


class InvalidImage(ServeError):
    status, code = 400, "invalid_image"


class Unauthorized(ServeError):
    status, code = 401, "unauthorized"


class NotFound(ServeError):
    status, code = 404, "not_found"


class PayloadTooLarge(ServeError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ServeError):
    status, code = 415, "unsupported_media_type"


class Overloaded(ServeError):
    status, code = 503, "overloaded"


class NotReady(ServeError):
    status, code = 503, "not_ready"


class Timeout(ServeError):
    status, code = 504, "timeout"


class BackendError(Exception):
    """A backend could not be built, verified or run (server side, not the client's fault)."""
