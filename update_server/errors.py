"""The one error hierarchy of ``update_server``.

Each error carries the HTTP status and a short machine code the API returns as JSON
(``{"error": {"code": ..., "message": ...}}``), and a message a person can act on.
Raise these from handlers and services; the app's error handlers turn them into responses.
"""

from __future__ import annotations


class Error(Exception):
    """Base of every error raised on purpose by the update server."""

    status: int = 500
    code: str = "internal_error"

    def __init__(
        self, message: str, *, code: str | None = None, field: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field  # the input field at fault, echoed in the JSON error when known
        if code is not None:
            self.code = code


class ConfigError(Error):
    """The server configuration is unusable (bad TOML, bad value, missing directory)."""

    code = "config_error"


class BadRequestError(Error):
    """The request body or parameters are malformed (bad JSON, wrong types, bad values)."""

    status = 400
    code = "bad_request"


class UnauthorizedError(Error):
    """No credentials, or credentials that do not verify (bad signature, replay, unknown key)."""

    status = 401
    code = "unauthorized"


class ForbiddenError(Error):
    """Authenticated, but not allowed (wrong device, disabled device, role too low)."""

    status = 403
    code = "forbidden"


class NotFoundError(Error):
    """The resource does not exist (or the caller may not know that it does)."""

    status = 404
    code = "not_found"


class ConflictError(Error):
    """The request conflicts with current state (already enrolled, rollout already running)."""

    status = 409
    code = "conflict"


class TooLargeError(Error):
    """The request body exceeds the configured limit."""

    status = 413
    code = "too_large"


class RangeNotSatisfiableError(Error):
    """An HTTP Range header does not fit the file."""

    status = 416
    code = "range_not_satisfiable"


class TooManyRequestsError(Error):
    """A throttle or quota says "not now": answered 429 with ``Retry-After`` (whole seconds)."""

    status = 429
    code = "too_many_requests"

    def __init__(self, message: str, *, retry_after_s: int, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = max(1, int(retry_after_s))
