from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from keygate.headers import (
    HOP_BY_HOP,
    REQUEST_ALLOW,
    REQUEST_NEVER,
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


@given(headers)
def test_response_headers_are_allowlisted(hs: list[tuple[str, str]]) -> None:
    out = {name.lower() for name, _ in filter_response(hs)}
    assert not out & (HOP_BY_HOP | {"set-cookie", "openai-organization", "openai-project"})
    for name, _ in hs:
        low = name.lower()
        if low.startswith("x-ratelimit-") or low in {"content-type", "x-request-id"}:
            assert low in out


def test_operator_cannot_allow_dangerous_headers() -> None:
    allow = request_allowlist(["Cookie", "X-Forwarded-For", "OpenAI-Organization", "X-Team"])
    assert "x-team" in allow
    assert not allow & {"cookie", "x-forwarded-for", "openai-organization"}
