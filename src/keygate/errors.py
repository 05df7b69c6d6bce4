"""One error tree, and the one place that turns an error into OpenAI's error JSON.

::

    KeygateError                      500 server_error
    ├── InvalidRequest                400 invalid_request_error
    │   ├── PayloadTooLarge           413
    │   └── UnsupportedMediaType      415
    ├── AuthenticationFailed          401 invalid_api_key
    ├── PermissionDenied              403 permission_denied
    ├── NotFound                      404 not_found
    ├── Conflict                      409 conflict
    ├── RateLimited                   429 rate_limit_exceeded   (carries Retry-After)
    │   └── BudgetExceeded            429 insufficient_quota    (x-should-retry: false)
    ├── ServiceUnavailable            503 server_error          (keygate's own state unreachable)
    ├── UpstreamError                 502 upstream_error
    │   ├── UpstreamUnavailable       503 upstream_unavailable
    │   └── UpstreamTimeout           504 upstream_timeout
    ├── StoreUnavailable              503 store_unavailable     (the database cannot be reached)
    └── ConfigError                   (start-up only, never sent to a client)

    ClientGone                        the client went away (not an answer: nobody is left to read it)

Guards return these as values (``return NotFound(...)``) rather than raising from deep inside.
Module-level instances are fine as values but are never raised: a raised exception keeps its
traceback (and every frame in it) alive for as long as the instance lives, so code that raises
builds a fresh one. :func:`error_body` is the one renderer: the JSON answer, and the final SSE
event of a stream that fails after it started (:func:`sse_error_event`).
"""

from __future__ import annotations

from typing import ClassVar

import orjson


class KeygateError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code if code is not None else self.default_code
        self.param = param
        self.headers = headers or []


class InvalidRequest(KeygateError):
    status = 400
    type = "invalid_request_error"
    default_code = "invalid_request"


class PayloadTooLarge(InvalidRequest):
    status = 413
    default_code = "payload_too_large"


class UnsupportedMediaType(InvalidRequest):
    status = 415
    default_code = "unsupported_media_type"


class AuthenticationFailed(KeygateError):
    status = 401
    type = "invalid_request_error"
    default_code = "invalid_api_key"


class PermissionDenied(KeygateError):
    status = 403
    type = "permission_denied"
    default_code = "permission_denied"


class NotFound(KeygateError):
    status = 404
    type = "invalid_request_error"
    default_code = "not_found"


class Conflict(KeygateError):
    status = 409
    type = "invalid_request_error"
    default_code = "conflict"


class RateLimited(KeygateError):
    status = 429
    type = "rate_limit_exceeded"
    default_code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float = 1.0, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.retry_after = retry_after
        self.headers = [("retry-after", str(max(1, int(retry_after + 0.999)))), *self.headers]


class BudgetExceeded(RateLimited):
    """A budget is spent: retrying before the period ends cannot help, so the SDK is told not to."""

    type = "insufficient_quota"
    default_code = "insufficient_quota"

    def __init__(self, message: str, *, retry_after: float = 1.0, **kwargs: object) -> None:
        super().__init__(message, retry_after=retry_after, **kwargs)
        self.headers.append(("x-should-retry", "false"))


class ServiceUnavailable(KeygateError):
    """keygate cannot decide a request now (its shared counters are unreachable): retry shortly."""

    status = 503
    default_code = "service_unavailable"


class UpstreamError(KeygateError):
    status = 502
    type = "upstream_error"
    default_code = "bad_gateway"


class UpstreamUnavailable(UpstreamError):
    status = 503
    default_code = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    status = 504
    default_code = "upstream_timeout"


class StoreUnavailable(KeygateError):
    """The database cannot be reached (a networked store): the change was not made; retry later."""

    status = 503
    type = "server_error"
    default_code = "store_unavailable"


class ConfigError(KeygateError):
    """Invalid configuration; raised at start-up, names the offending field."""

    default_code = "config_error"


class ClientGone(Exception):
    """The client went away (mid-body or mid-stream); recorded as status 499, never answered."""


def error_body(err: KeygateError) -> bytes:
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return orjson.dumps(
        {"error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}}
    )


def error_headers(err: KeygateError) -> list[tuple[str, str]]:
    return [("content-type", "application/json"), *err.headers]


def sse_error_event(err: KeygateError) -> bytes:
    """A final server-sent event carrying the error, for failures after a stream started."""
    return b"data: " + error_body(err) + b"\n\n"
