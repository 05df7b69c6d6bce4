"""What happened to a request, in one word: the ``outcome`` of the metrics and the spans.

Derived from what the usage row already says (the error code the guards, the forwarder or the app
set, the status, whether the request was forwarded), so the request path computes nothing for it.
A code not listed here is classified by its status.
"""

from __future__ import annotations

from typing import Final

OUTCOMES: Final = (
    "allowed",  # forwarded, and the upstream's answer (2xx-4xx) went to the client
    "auth_failed",  # no key, an unknown, revoked or expired key or token
    "locked_out",  # too many failed authentications from the client's address
    "rate_limited",  # a keygate rate limit, concurrency gate or global cap (429)
    "budget_exceeded",  # a budget (429 insufficient_quota)
    "policy_denied",  # the key's or team's policy: model, route, network, unpriced under a budget
    "content_blocked",  # the prompt scan refused a secret or personal data in the prompt
    "invalid_request",  # keygate refused the request itself: malformed, too large, unknown route
    "upstream_rate_limited",  # the upstream answered 429 on every key tried, or all keys cool down
    "upstream_error",  # the upstream failed, timed out, refused the request or keygate's key
    "client_closed",  # the client went away before the answer was complete
    "internal_error",  # a bug in keygate (500)
)

_BY_CODE: Final = {
    **dict.fromkeys(
        (
            "missing_api_key",
            "invalid_api_key",
            "revoked_api_key",
            "expired_api_key",
            "invalid_token",
            "expired_token",
            "introspection_failed",
        ),
        "auth_failed",
    ),
    "auth_locked_out": "locked_out",
    **dict.fromkeys(("rate_limit_exceeded", "concurrency_limit_exceeded", "gateway_busy"), "rate_limited"),
    **dict.fromkeys(("insufficient_quota", "budget_exceeded"), "budget_exceeded"),
    **dict.fromkeys(
        (
            "permission_denied",
            "model_not_allowed",
            "route_not_allowed",
            "ip_not_allowed",
            "unknown_team",
            "model_not_priced",
            "service_tier_not_priced",
            "endpoint_not_priced",
            "file_input_not_metered",
        ),
        "policy_denied",
    ),
    **dict.fromkeys(("secret_in_prompt", "pii_in_prompt"), "content_blocked"),
    "client_closed": "client_closed",
    "internal_error": "internal_error",
    **dict.fromkeys(
        (
            "no_upstream",
            "bad_gateway",
            "upstream_auth_failed",
            "upstream_unavailable",
            "upstream_timeout",
            "upstream_connect_failed",
            "upstream_connect_timeout",
            "upstream_connection_error",
        ),
        "upstream_error",
    ),
}


def outcome(status: int, error_code: str | None, forwarded: bool) -> str:
    """The outcome of a request that ended with ``status`` and ``error_code`` (None: no error of
    keygate's); ``forwarded``: an upstream was chosen for it."""
    if error_code is None:
        if status >= 500 or status == 0:
            return "upstream_error" if forwarded else "internal_error"
        if status == 429 and forwarded:
            return "upstream_rate_limited"
        return "allowed"
    found = _BY_CODE.get(error_code)
    if found is not None:
        if found == "rate_limited" and forwarded:  # the pool's 429: every key is cooling down
            return "upstream_rate_limited"
        return found
    if forwarded:  # an upstream 403 relayed as keygate's own, with the upstream's code
        return "upstream_error"
    if status == 401:
        return "auth_failed"
    if status == 403:
        return "policy_denied"
    if status == 429:
        return "rate_limited"
    if status >= 500:
        return "internal_error"
    return "invalid_request"


def status_class(status: int) -> str:
    """``2xx`` ... ``5xx`` (``499``, a client that went away, is ``4xx``; no status at all ``none``)."""
    return f"{status // 100}xx" if 100 <= status <= 599 else "none"
