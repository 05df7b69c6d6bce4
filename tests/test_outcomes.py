"""The outcome of a request (``keygate.outcomes``) from its status, error code and forwarding: the
``outcome`` label of the metrics and the spans."""

from __future__ import annotations

import pytest

from keygate.outcomes import OUTCOMES, outcome, status_class


@pytest.mark.parametrize(
    ("status", "code", "forwarded", "expected"),
    [
        (200, None, True, "allowed"),
        (400, None, True, "allowed"),  # the upstream's own 4xx: allowed, told apart by status_class
        (429, None, True, "upstream_rate_limited"),
        (503, None, True, "upstream_error"),
        (500, "internal_error", False, "internal_error"),
        (401, "missing_api_key", False, "auth_failed"),
        (401, "revoked_api_key", False, "auth_failed"),
        (401, "expired_token", False, "auth_failed"),
        (429, "auth_locked_out", False, "locked_out"),
        (429, "rate_limit_exceeded", False, "rate_limited"),
        (429, "rate_limit_exceeded", True, "upstream_rate_limited"),  # every upstream key cooling
        (429, "gateway_busy", False, "rate_limited"),
        (429, "insufficient_quota", False, "budget_exceeded"),
        (403, "model_not_allowed", False, "policy_denied"),
        (403, "model_not_priced", False, "policy_denied"),
        (400, "secret_in_prompt", False, "content_blocked"),
        (404, "not_found", False, "invalid_request"),
        (400, "invalid_json", False, "invalid_request"),
        (403, "model_not_found", True, "upstream_error"),  # an upstream 403, relayed as keygate's
        (502, "upstream_auth_failed", True, "upstream_error"),
        (504, "upstream_timeout", True, "upstream_error"),
        (503, "upstream_unavailable", True, "upstream_error"),
        (499, "client_closed", True, "client_closed"),
        (401, "some_new_code", False, "auth_failed"),
        (403, "some_new_code", False, "policy_denied"),
        (429, "some_new_code", False, "rate_limited"),
        (500, "some_new_code", False, "internal_error"),
    ],
)
def test_outcome(status: int, code: str | None, forwarded: bool, expected: str) -> None:
    assert outcome(status, code, forwarded) == expected
    assert expected in OUTCOMES


def test_status_class() -> None:
    assert [status_class(s) for s in (200, 302, 404, 499, 503, 0, 600)] == [
        "2xx",
        "3xx",
        "4xx",
        "4xx",
        "5xx",
        "none",
        "none",
    ]
