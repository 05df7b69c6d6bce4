"""OAuth2 opaque tokens through RFC 7662 introspection against a real loopback endpoint."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from keygate.testing import MockUpstream

from ..helpers import Gateway
from ..idp import IdP

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
CLIENT_SECRET = "s3cret-introspection"


@pytest.fixture(scope="module")
def idp() -> Iterator[IdP]:
    with IdP() as provider:
        yield provider


@pytest.fixture(scope="module")
def gw(idp: IdP, upstream: MockUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    extra = {
        "auth": {
            "introspection": {
                "url": idp.url + "/introspect",
                "client_id": "${KG_INTROSPECT_ID}",
                "client_secret": "${KG_INTROSPECT_SECRET}",
                "cache_ttl": 3600,
                "inactive_cache_ttl": 3600,
                "team_claim": "scope",
            }
        }
    }
    env = {"KG_INTROSPECT_ID": "keygate", "KG_INTROSPECT_SECRET": CLIENT_SECRET}
    with Gateway(tmp_path_factory.mktemp("oauth"), upstream.url, extra=extra, env=env) as g:
        g.secrets.append(CLIENT_SECRET)
        g.cli("teams", "create", "embedders", "--allow-route", "embeddings")
        yield g


def call(gw: Gateway, token: str) -> httpx.Response:
    return httpx.post(f"{gw.url}/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {token}"})


def test_active_token_is_cached(gw: Gateway, idp: IdP, mock: MockUpstream) -> None:
    idp.tokens["opaque-active-1"] = {"active": True, "sub": "svc-a", "exp": int(time.time()) + 600}
    client = openai.OpenAI(base_url=gw.url, api_key="opaque-active-1", max_retries=0)
    before = idp.introspections
    for _ in range(3):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert idp.introspections - before == 1 and idp.bad_auth == 0
    assert len(mock.requests) == 3
    assert gw.wait_entry(lambda e: e["status"] == 200)["key_id"] == "oauth:svc-a"


def test_inactive_token_is_rejected_and_cached(gw: Gateway, idp: IdP, mock: MockUpstream) -> None:
    before = idp.introspections
    for _ in range(3):
        r = call(gw, "opaque-unknown")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_token"
    assert idp.introspections - before == 1
    assert mock.requests == []


def test_cache_lives_no_longer_than_the_token(gw: Gateway, idp: IdP, mock: MockUpstream) -> None:
    # exp is whole seconds: + 2 leaves the token 1 to 2 s to live (+ 1 could leave a few ms, and
    # the first call would then meet an expired token)
    idp.tokens["opaque-short"] = {"active": True, "sub": "svc-b", "exp": int(time.time()) + 2}
    assert call(gw, "opaque-short").status_code == 200
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and call(gw, "opaque-short").status_code == 200:
        time.sleep(0.2)
    idp.tokens["opaque-short"] = {"active": False}
    assert call(gw, "opaque-short").status_code == 401


def test_scope_maps_to_team_policy(gw: Gateway, idp: IdP, mock: MockUpstream) -> None:
    idp.tokens["opaque-scoped"] = {"active": True, "client_id": "batch-job", "scope": "read embedders"}
    r = call(gw, "opaque-scoped")
    assert r.status_code == 403 and r.json()["error"]["code"] == "route_not_allowed"
    r = httpx.post(
        f"{gw.url}/embeddings",
        json={"model": "text-embedding-3-small", "input": "x"},
        headers={"Authorization": "Bearer opaque-scoped"},
    )
    assert r.status_code == 200
    assert [q.path for q in mock.requests] == ["/v1/embeddings"]


def test_idp_down_is_503_and_not_cached(gw: Gateway, idp: IdP, mock: MockUpstream) -> None:
    idp.tokens["opaque-later"] = {"active": True, "sub": "svc-c"}
    idp.down = True
    try:
        r = call(gw, "opaque-later")
        assert r.status_code == 503 and r.json()["error"]["code"] == "introspection_failed"
    finally:
        idp.down = False
    assert call(gw, "opaque-later").status_code == 200
    assert len(mock.requests) == 1


def test_no_secret_written(gw: Gateway) -> None:
    gw.stop()
    from ..helpers import assert_no_secret_written

    assert_no_secret_written(gw.written_files(), [*gw.secrets, "opaque-active-1", "opaque-scoped"])
    gw.start()
