from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from keygate.headers import (
    HOP_BY_HOP,
    RATE_LIMIT_HEADERS,
    REQUEST_ALLOW,
    REQUEST_NEVER,
    RESPONSE_ALLOW,
    SINGLE_VALUED,
    conflicting_key,
    duplicated,
    filter_request,
    filter_response,
    request_allowlist,
)

header_name = st.one_of(
    st.sampled_from(
        sorted(
            REQUEST_NEVER
            | REQUEST_ALLOW
            | {"set-cookie", "openai-organization", "x-ratelimit-limit-requests", "x-request-id"}
        )
    ),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=20),
).flatmap(lambda n: st.sampled_from([n, n.upper(), n.title()]))
headers = st.lists(st.tuples(header_name, st.text(max_size=20)), max_size=30)


@given(headers, st.lists(st.sampled_from([*sorted(REQUEST_NEVER), "x-team"]), max_size=5))
def test_only_allowlisted_request_headers_go_upstream(hs: list[tuple[str, str]], extra: list[str]) -> None:
    allow = request_allowlist(extra)
    out = filter_request(hs, allow, "sk-upstream")
    assert out["authorization"] == "Bearer sk-upstream"
    for name in out:
        assert name == name.lower()
        assert name == "authorization" or name in allow
        assert name == "authorization" or name not in REQUEST_NEVER


KEY = "sk-upstream-0123456789"
values = st.one_of(st.text(max_size=20), st.text(max_size=8).map(lambda t: t + KEY + t))


@given(st.lists(st.tuples(header_name, values), max_size=30))
def test_response_headers_are_allowlisted(hs: list[tuple[str, str]]) -> None:
    out = filter_response(hs, KEY)
    names = {name for name, _ in out}
    assert names <= RESPONSE_ALLOW
    assert not names & (
        HOP_BY_HOP | {"set-cookie", "openai-organization", "openai-project", "openai-version"}
    )
    assert all(KEY not in value for _, value in out)
    for name, _ in hs:
        if name.lower() in RESPONSE_ALLOW:
            assert name.lower() in names


def test_only_openais_six_rate_limit_headers_pass() -> None:
    assert sorted(RATE_LIMIT_HEADERS) == [
        "x-ratelimit-limit-requests",
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-requests",
        "x-ratelimit-reset-tokens",
    ]
    upstream = [(name, "1") for name in RATE_LIMIT_HEADERS] + [
        ("x-ratelimit-debug", "k=" + KEY),
        ("X-RateLimit-Limit-Project-Tokens", "5"),
        ("openai-version", "2020-10-01"),
        ("X-Request-ID", "req_" + KEY),
    ]
    out = filter_response(upstream, KEY, frozenset({"x-ratelimit-limit-requests"}))
    assert sorted(out) == sorted(
        [(name, "1") for name in RATE_LIMIT_HEADERS - {"x-ratelimit-limit-requests"}]
        + [("x-request-id", "req_[redacted]")]
    )


def test_duplicated_names_only_the_headers_keygate_decides_by() -> None:
    assert duplicated([("accept", "a"), ("accept", "b"), ("authorization", "x")]) is None
    for name in SINGLE_VALUED:
        assert duplicated([(name, "a"), ("accept", "b"), (name, "a")]) == name  # even with equal values


def test_conflicting_key() -> None:
    assert conflicting_key({"authorization": "Bearer kg_a"}) is None
    assert conflicting_key({"x-api-key": "kg_a"}) is None  # no Authorization: authentication decides
    assert conflicting_key({"authorization": "Bearer kg_a", "x-api-key": " kg_a "}) is None
    assert conflicting_key({"authorization": "bearer  kg_a", "api-key": "kg_a"}) is None
    assert conflicting_key({"authorization": "Bearer kg_a", "api-key": "kg_b"}) == "api-key"
    assert conflicting_key({"authorization": "Bearer kg_a", "x-api-key": "kg_b"}) == "x-api-key"
    assert conflicting_key({"authorization": "Basic kg_a", "x-api-key": "kg_a"}) == "x-api-key"


def test_operator_cannot_allow_dangerous_headers() -> None:
    allow = request_allowlist(["Cookie", "X-Forwarded-For", "OpenAI-Organization", "X-Team", "X-Api-Key"])
    assert "x-team" in allow
    assert not allow & {"cookie", "x-forwarded-for", "openai-organization", "x-api-key"}
