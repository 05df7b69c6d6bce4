"""keygate.errors: the error tree and the one renderer of OpenAI-shaped errors."""

from __future__ import annotations

import orjson
import pytest

from keygate import errors
from keygate.errors import (
    BudgetExceeded,
    KeygateError,
    RateLimited,
    error_body,
    error_headers,
    sse_error_event,
)


@pytest.mark.parametrize(
    ("cls", "status", "type_", "code"),
    [
        (errors.KeygateError, 500, "server_error", "internal_error"),
        (errors.InvalidRequest, 400, "invalid_request_error", "invalid_request"),
        (errors.PayloadTooLarge, 413, "invalid_request_error", "payload_too_large"),
        (errors.UnsupportedMediaType, 415, "invalid_request_error", "unsupported_media_type"),
        (errors.AuthenticationFailed, 401, "invalid_request_error", "invalid_api_key"),
        (errors.PermissionDenied, 403, "permission_denied", "permission_denied"),
        (errors.NotFound, 404, "invalid_request_error", "not_found"),
        (errors.Conflict, 409, "invalid_request_error", "conflict"),
        (errors.RateLimited, 429, "rate_limit_exceeded", "rate_limit_exceeded"),
        (errors.BudgetExceeded, 429, "insufficient_quota", "insufficient_quota"),
        (errors.UpstreamError, 502, "upstream_error", "bad_gateway"),
        (errors.UpstreamUnavailable, 503, "upstream_error", "upstream_unavailable"),
        (errors.UpstreamTimeout, 504, "upstream_error", "upstream_timeout"),
        (errors.ConfigError, 500, "server_error", "config_error"),
    ],
)
def test_error_body_shape(cls: type[KeygateError], status: int, type_: str, code: str) -> None:
    err = cls("Something went wrong.")
    assert err.status == status and isinstance(err, KeygateError) and str(err) == "Something went wrong."
    assert orjson.loads(error_body(err)) == {
        "error": {"message": "Something went wrong.", "type": type_, "param": None, "code": code}
    }


def test_code_and_param_override() -> None:
    err = errors.InvalidRequest("'model' must be a string.", code="bad_model", param="model")
    assert orjson.loads(error_body(err))["error"] == {
        "message": "'model' must be a string.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "bad_model",
    }
    assert error_headers(err) == [("content-type", "application/json")]
    extra = KeygateError("x", headers=[("x-a", "1")])
    assert error_headers(extra) == [("content-type", "application/json"), ("x-a", "1")]


def test_sse_error_event() -> None:
    err = errors.UpstreamError("The connection to the upstream API failed.", code="upstream_connection_error")
    event = sse_error_event(err)
    assert event.startswith(b"data: ") and event.endswith(b"\n\n") and event.count(b"\n") == 2
    assert orjson.loads(event[len(b"data: ") :]) == orjson.loads(error_body(err))


@pytest.mark.parametrize(
    ("retry_after", "header"),
    [(0.0, "1"), (0.2, "1"), (1.0, "1"), (1.0005, "1"), (1.002, "2"), (1.5, "2"), (59.9, "60")],
)
def test_rate_limited_says_when_to_retry(retry_after: float, header: str) -> None:
    err = RateLimited("Slow down.", retry_after=retry_after, headers=[("x-ratelimit-limit-requests", "10")])
    assert err.retry_after == retry_after
    assert err.headers == [("retry-after", header), ("x-ratelimit-limit-requests", "10")]
    assert error_headers(err)[0] == ("content-type", "application/json")


def test_budget_exceeded_tells_the_sdk_not_to_retry() -> None:
    err = BudgetExceeded("The key's budget is spent.", retry_after=3600)
    assert isinstance(err, RateLimited) and err.status == 429
    assert err.headers == [("retry-after", "3600"), ("x-should-retry", "false")]
    assert BudgetExceeded("x").headers == [("retry-after", "1"), ("x-should-retry", "false")]


def test_instances_do_not_share_headers() -> None:
    a, b = RateLimited("a"), RateLimited("b")
    a.headers.append(("x", "y"))
    assert b.headers == [("retry-after", "1")]
    assert KeygateError("c").headers == [] and KeygateError("c").headers is not KeygateError("d").headers


def test_client_gone_is_not_an_answer() -> None:
    assert not issubclass(errors.ClientGone, KeygateError)
