"""Per-key and per-team policy through a real gateway: models, routes, expiry, networks, caps."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest

from keygate.testing import MockUpstream

from ..helpers import Gateway


def sdk(gw: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url, api_key=key, max_retries=0)


def chat(client: openai.OpenAI, model: str = "gpt-4o-mini", **kw: object) -> object:
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], **kw)  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def gw(upstream: MockUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with Gateway(tmp_path_factory.mktemp("policy"), upstream.url) as g:
        yield g


def test_allowed_models_exact_and_glob(gw: Gateway, mock: MockUpstream) -> None:
    key = gw.create_key("models", "--allow-model", "gpt-4o*", "--allow-model", "o3")["key"]
    client = sdk(gw, key)
    chat(client, "gpt-4o-mini")
    chat(client, "o3")
    with pytest.raises(openai.PermissionDeniedError, match=r"gpt-3\.5-turbo") as exc:
        chat(client, "gpt-3.5-turbo")
    assert exc.value.code == "model_not_allowed"
    with pytest.raises(openai.PermissionDeniedError, match="o3-mini"):
        chat(client, "o3-mini")
    assert [r.json()["model"] for r in mock.requests] == ["gpt-4o-mini", "o3"]


def test_allowed_routes(gw: Gateway, mock: MockUpstream) -> None:
    key = gw.create_key("emb-only", "--allow-route", "embeddings")["key"]
    client = sdk(gw, key)
    assert client.embeddings.create(model="text-embedding-3-small", input="x").data
    with pytest.raises(openai.PermissionDeniedError, match=r"chat\.completions") as exc:
        chat(client)
    assert exc.value.code == "route_not_allowed"
    with pytest.raises(openai.PermissionDeniedError):
        client.models.list()
    assert [r.path for r in mock.requests] == ["/v1/embeddings"]


def test_expiry_in_the_past_and_future(gw: Gateway, mock: MockUpstream) -> None:
    old = gw.create_key("old", "--expires-at", "2020-01-01T00:00:00Z")
    fresh = gw.create_key("fresh", "--expires-in", "30d")
    with pytest.raises(openai.AuthenticationError, match="expired") as exc:
        chat(sdk(gw, old["key"]))
    assert exc.value.code == "expired_api_key"
    chat(sdk(gw, fresh["key"]))
    assert len(mock.requests) == 1
    # Extending the expiry with `keys update` takes effect on the next request.
    gw.cli("keys", "update", old["id"], "--expires-in", "1h")
    chat(sdk(gw, old["key"]))
    gw.cli("keys", "update", old["id"], "--expires-at", "2021-06-01T00:00:00")
    with pytest.raises(openai.AuthenticationError, match="expired"):
        chat(sdk(gw, old["key"]))
    assert len(mock.requests) == 2


def test_allowed_client_networks(gw: Gateway, mock: MockUpstream) -> None:
    here = gw.create_key("here", "--allow-ip", "127.0.0.0/8", "--allow-ip", "2001:db8::/32")["key"]
    elsewhere = gw.create_key("elsewhere", "--allow-ip", "10.0.0.0/8", "--allow-ip", "::1/128")["key"]
    chat(sdk(gw, here))
    with pytest.raises(openai.PermissionDeniedError, match="network") as exc:
        chat(sdk(gw, elsewhere))
    assert exc.value.code == "ip_not_allowed"
    assert len(mock.requests) == 1


def test_body_cap(gw: Gateway, mock: MockUpstream) -> None:
    key = gw.create_key("small", "--max-body-bytes", "300")["key"]
    chat(sdk(gw, key))
    with pytest.raises(openai.APIStatusError) as exc:
        sdk(gw, key).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "x" * 400}]
        )
    assert exc.value.status_code == 413

    # Chunked upload (no Content-Length): counted after reading, still refused.
    def gen() -> Iterator[bytes]:
        yield json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "y" * 400}]}).encode()

    r = httpx.post(
        f"{gw.url}/chat/completions",
        content=gen(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    assert len(mock.requests) == 1


def test_output_token_cap_is_clamped(gw: Gateway, mock: MockUpstream) -> None:
    key = gw.create_key("capped", "--max-output-tokens", "100")["key"]
    client = sdk(gw, key)
    chat(client, max_tokens=5000)
    chat(client, max_completion_tokens=50)
    chat(client)
    client.responses.create(model="gpt-4o", input="hi", max_output_tokens=9999)
    client.completions.create(model="gpt-3.5-turbo-instruct", prompt="hi")
    sent = [r.json() for r in mock.requests]
    assert sent[0]["max_tokens"] == 100
    assert sent[1]["max_completion_tokens"] == 50
    assert sent[2]["max_completion_tokens"] == 100 and "max_tokens" not in sent[2]
    assert sent[3]["max_output_tokens"] == 100
    assert sent[4]["max_tokens"] == 100


def test_team_policy_and_the_stricter_wins(gw: Gateway, mock: MockUpstream) -> None:
    gw.cli("teams", "create", "research", "--allow-model", "gpt-4o*", "--max-output-tokens", "50")
    key = gw.create_key(
        "member", "--team", "research", "--allow-model", "gpt-4o-mini", "--max-output-tokens", "500"
    )
    client = sdk(gw, key["key"])
    chat(client, "gpt-4o-mini", max_tokens=400)
    with pytest.raises(openai.PermissionDeniedError, match="gpt-4o-2024"):
        chat(client, "gpt-4o-2024-08-06")  # the team allows it, the key does not
    loose = gw.create_key("loose", "--team", "research")["key"]
    with pytest.raises(openai.PermissionDeniedError, match="o3"):
        chat(sdk(gw, loose), "o3")  # the key has no rule, the team's applies
    gw.cli("teams", "update", "research", "--expires-at", "2020-01-01T00:00:00Z")
    with pytest.raises(openai.AuthenticationError, match="expired"):
        chat(client, "gpt-4o-mini")
    (sent,) = mock.requests
    assert sent.json()["max_tokens"] == 50


def test_keys_list_shows_policy_and_update_clears(gw: Gateway) -> None:
    key = gw.create_key(
        "shown",
        "--allow-model",
        "gpt-4o",
        "--allow-ip",
        "10.1.0.0/16",
        "--expires-at",
        "2030-01-01T00:00:00Z",
    )
    table = gw.cli("keys", "list").stdout
    row = next(line for line in table.splitlines() if line.startswith(key["id"]))
    assert (
        "models=gpt-4o" in row and "allow_ips=10.1.0.0/16" in row and "expires_at=2030-01-01T00:00:00Z" in row
    )
    gw.cli("keys", "update", key["id"], "--clear", "models", "--clear", "allow_ips")
    listed = {k["id"]: k for k in json.loads(gw.cli("keys", "list", "--json").stdout)}
    assert listed[key["id"]]["policy"] == {"expires_at": "2030-01-01T00:00:00Z"}


def test_bad_policy_flags_fail_clearly(gw: Gateway) -> None:
    for flags, needle in [
        (["--allow-ip", "10.0.0.300/8"], "--allow-ip"),
        (["--expires-in", "soon"], "--expires-in"),
        (["--expires-at", "tomorrow"], "--expires-at"),
        (["--allow-route", "admin"], "--allow-route"),
        (["--max-output-tokens", "0"], "--max-output-tokens"),
    ]:
        r = gw.cli("keys", "create", "--name", "bad", *flags, check=False)
        assert r.returncode == 1 and needle in r.stderr
