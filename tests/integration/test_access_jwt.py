"""JWT bearer (OIDC) authentication: JWKS from a real loopback IdP, every rejection with its own test."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator

import httpx
import jwt
import openai
import pytest
from cryptography.hazmat.primitives import serialization

from keygate.testing import MockUpstream

from ..helpers import Gateway, assert_no_secret_written
from ..idp import AUDIENCE, ISSUER, IdP, SigningKey

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def idp() -> Iterator[IdP]:
    with IdP() as provider:
        provider.keys.append(SigningKey("k1"))
        yield provider


@pytest.fixture(scope="module")
def gw(idp: IdP, upstream: MockUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    extra = {
        "auth": {
            "jwt": {
                "issuer": ISSUER,
                "audience": AUDIENCE,
                "jwks_url": idp.url + "/jwks.json",
                "algorithms": ["RS256"],
                "leeway": 5,
                "team_claim": "team",
                "jwks_refresh_interval": 3600,
            }
        }
    }
    with Gateway(tmp_path_factory.mktemp("jwt"), upstream.url, extra=extra) as g:
        g.cli("teams", "create", "research", "--allow-model", "gpt-4o*")
        yield g


@pytest.fixture
def key(idp: IdP) -> SigningKey:
    return idp.keys[0]


def call(gw: Gateway, token: str) -> httpx.Response:
    return httpx.post(f"{gw.url}/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {token}"})


def rejected(gw: Gateway, token: str, mock: MockUpstream, needle: str = "") -> None:
    r = call(gw, token)
    assert r.status_code == 401, r.text
    assert r.json()["error"]["type"] == "invalid_request_error" and needle in r.json()["error"]["message"]
    assert mock.requests == []


def b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_valid_token_through_the_sdk_and_usage_identity(
    gw: Gateway, key: SigningKey, mock: MockUpstream
) -> None:
    client = openai.OpenAI(base_url=gw.url, api_key=key.sign(sub="alice@example"), max_retries=0)
    reply = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content
    assert len(mock.requests) == 1
    entry = gw.wait_entry(lambda e: e["status"] == 200 and e.get("key_id", "").startswith("jwt:"))
    assert entry["key_id"] == "jwt:alice@example"


def test_team_claim_maps_to_team_policy(gw: Gateway, key: SigningKey, mock: MockUpstream) -> None:
    token = key.sign({"team": "research"})
    assert call(gw, token).status_code == 200
    r = httpx.post(
        f"{gw.url}/chat/completions",
        json={**CHAT, "model": "o3"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 403 and "o3" in r.json()["error"]["message"]
    r = call(gw, key.sign({"team": "no-such-team"}))
    assert r.status_code == 403 and r.json()["error"]["code"] == "unknown_team"
    assert len(mock.requests) == 1


def test_alg_none(gw: Gateway, mock: MockUpstream) -> None:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "exp": now + 300}
    token = b64({"alg": "none", "typ": "JWT", "kid": "k1"}) + "." + b64(claims) + "."
    rejected(gw, token, mock, "algorithm")


def test_hs256_signed_with_the_rsa_public_key(gw: Gateway, key: SigningKey, mock: MockUpstream) -> None:
    pem = key.public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "exp": now + 300}
    header = b64({"alg": "HS256", "typ": "JWT", "kid": "k1"})
    signing_input = f"{header}.{b64(claims)}"
    sig = base64.urlsafe_b64encode(hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()).rstrip(
        b"="
    )
    rejected(gw, f"{signing_input}.{sig.decode()}", mock, "algorithm")


def test_expired(gw: Gateway, key: SigningKey, mock: MockUpstream) -> None:
    now = int(time.time())
    rejected(gw, key.sign(exp=now - 60, iat=now - 600), mock, "expired")


def test_not_yet_valid(gw: Gateway, key: SigningKey, mock: MockUpstream) -> None:
    rejected(gw, key.sign(nbf=int(time.time()) + 120), mock, "not valid yet")


def test_wrong_audience(gw: Gateway, key: SigningKey, mock: MockUpstream) -> None:
    rejected(gw, key.sign(aud="someone-else"), mock, "not meant for this gateway")


def test_wrong_issuer(gw: Gateway, key: SigningKey, mock: MockUpstream) -> None:
    rejected(gw, key.sign(iss="https://evil.test"), mock, "issuer")


def test_missing_required_claims(gw: Gateway, key: SigningKey, mock: MockUpstream) -> None:
    for missing in ("exp", "iss", "aud"):
        rejected(gw, key.sign(**{missing: None}), mock)


def test_bad_signature(gw: Gateway, key: SigningKey, mock: MockUpstream) -> None:
    forger = SigningKey("k1")  # same kid, different private key
    rejected(gw, forger.sign(), mock, "Invalid bearer token")
    good = key.sign()
    head, _body, sig = good.split(".")
    tampered = b64({**jwt.decode(good, options={"verify_signature": False}), "sub": "root"})
    rejected(gw, f"{head}.{tampered}.{sig}", mock, "Invalid bearer token")


def test_unknown_kid_refetches_at_most_once_per_interval(
    gw: Gateway, idp: IdP, key: SigningKey, mock: MockUpstream
) -> None:
    assert call(gw, key.sign()).status_code == 200
    before = idp.jwks_fetches
    stranger = SigningKey("unknown-kid")
    for _ in range(3):
        rejected_response = call(gw, stranger.sign())
        assert (
            rejected_response.status_code == 401
            and "unknown key" in rejected_response.json()["error"]["message"]
        )
    # the refresh interval is an hour: the first unknown kid may refetch, the next ones may not
    assert idp.jwks_fetches - before <= 1
    assert len(mock.requests) == 1


def test_keygate_keys_still_work_alongside_jwt(gw: Gateway, mock: MockUpstream) -> None:
    key = gw.create_key("classic")["key"]
    assert call(gw, key).status_code == 200
    mock.reset()
    rejected(gw, "not-a-jwt-nor-key", mock)


def test_rotation_and_idp_outage(
    tmp_path_factory: pytest.TempPathFactory, upstream: MockUpstream, mock: MockUpstream
) -> None:
    with IdP() as provider:
        first = SigningKey("first")
        provider.keys.append(first)
        extra = {
            "auth": {
                "keys": False,
                "jwt": {
                    "issuer": ISSUER,
                    "audience": AUDIENCE,
                    "jwks_url": provider.url + "/jwks.json",
                    "jwks_refresh_interval": 0,
                    "jwks_cache_ttl": 0.001,  # refetch on every request: proves outages keep the last keys
                },
            }
        }
        with Gateway(tmp_path_factory.mktemp("jwt-rot"), upstream.url, extra=extra) as gw:
            assert call(gw, first.sign()).status_code == 200
            second = SigningKey("second")
            provider.keys.append(second)  # rotation: the new kid is picked up on first sight
            assert call(gw, second.sign()).status_code == 200
            provider.down = True
            fetches = provider.jwks_fetches
            assert call(gw, first.sign()).status_code == 200  # last good keys keep working
            assert call(gw, second.sign()).status_code == 200
            assert provider.jwks_fetches > fetches  # it did try the IdP, which failed
            assert call(gw, gw.create_key("k")["key"]).status_code == 401  # keys are off here
            assert len(mock.requests) == 4


def test_static_public_key_file(
    tmp_path_factory: pytest.TempPathFactory, upstream: MockUpstream, mock: MockUpstream
) -> None:
    signer = SigningKey("static")
    work = tmp_path_factory.mktemp("jwt-static")
    (work / "idp.pem").write_bytes(
        signer.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    extra = {"auth": {"jwt": {"issuer": ISSUER, "audience": AUDIENCE, "public_key_file": "idp.pem"}}}
    with Gateway(work, upstream.url, extra=extra) as gw:
        assert call(gw, signer.sign()).status_code == 200
        assert call(gw, SigningKey("static").sign()).status_code == 401
        assert len(mock.requests) == 1


def test_no_token_is_written_anywhere(gw: Gateway, key: SigningKey, mock: MockUpstream) -> None:
    """Valid, expired and forged JWTs: none of them may appear in any file the gateway wrote."""
    now = int(time.time())
    good = key.sign(sub="bob@example")
    expired = key.sign({"exp": now - 600, "iat": now - 1200})
    forged = good[: good.rindex(".") + 1] + "A" * 40
    assert call(gw, good).status_code == 200
    assert call(gw, expired).status_code == 401
    assert call(gw, forged).status_code == 401
    gw.wait_entry(lambda e: e.get("key_id") == "jwt:bob@example")
    assert_no_secret_written(gw.written_files(), [good, expired, forged, *gw.secrets])
