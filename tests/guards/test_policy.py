"""Per-key and per-team access policy: expiry, client networks, routes, body size, models and
output-token caps. AccessPolicy (before the body is read) and RequestPolicy (after) in process,
then through a real gateway with policies written by the CLI or stored directly."""

from __future__ import annotations

import ipaddress
import json
import math
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from keygate import routes
from keygate.config import ensure_pepper
from keygate.context import Context
from keygate.errors import AuthenticationFailed, PayloadTooLarge, PermissionDenied
from keygate.guards.policy import AccessPolicy, RequestPolicy, model_allowed, names_model, policies
from keygate.store import open_store
from keygate.testing import MockUpstream, context, key_record
from keygate.types import AuditRecord, Team

from ..helpers import Gateway
from .common import decide

CHAT: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def _ctx(
    key_policy: dict[str, Any] | None = None,
    team_policy: dict[str, Any] | None = None,
    *,
    path: str = "/v1/chat/completions",
    body: dict[str, Any] | None = None,
    client: str = "127.0.0.1",
    method: str = "POST",
    **kw: Any,
) -> Context:
    team = Team("team_1", "crew", 0.0, team_policy) if team_policy is not None else None
    key = key_record("key_1", key_policy, team_id=team.id if team else None)
    ctx = context(
        method,
        path,
        json=body if body is not None else (CHAT if method == "POST" else None),
        key=key,
        team=team,
        peer=client,
        **kw,
    )
    ctx.client_addr = ipaddress.ip_address(client)  # as the client_ip guard sets it
    return ctx


def test_policies_are_the_keys_then_the_teams_each_only_when_set() -> None:
    assert policies(_ctx()) == ()
    assert policies(_ctx({"models": ["a"]})) == ({"models": ["a"]},)
    assert policies(_ctx({}, {"models": ["b"]})) == ({"models": ["b"]},)
    assert policies(_ctx({"models": ["a"]}, {"models": ["b"]})) == ({"models": ["a"]}, {"models": ["b"]})
    assert policies(_ctx({"models": ["a"]}, {})) == ({"models": ["a"]},)
    nobody = context()
    assert policies(nobody) == ()


def test_model_patterns_are_case_sensitive_globs() -> None:
    assert model_allowed("gpt-4o-mini", ["gpt-4o*"]) and model_allowed("o3", ["gpt-4o*", "o3"])
    assert not model_allowed("o3-mini", ["o3"]) and not model_allowed("GPT-4o", ["gpt-4o*"])
    assert model_allowed("gpt-4.1", ["gpt-4.?"]) and not model_allowed("gpt-4o", [])


# -- AccessPolicy: expiry ------------------------------------------------------------------------


def _expired(err: object) -> bool:
    if err is None:
        return False
    assert isinstance(err, AuthenticationFailed) and err.status == 401 and err.code == "expired_api_key"
    assert err.message == "This API key has expired."
    return True


@pytest.mark.parametrize(
    ("expires_at", "is_expired"),
    [
        ("2020-01-01T00:00:00Z", True),
        ("2999-01-01T00:00:00Z", False),
        ("2999-01-01T00:00:00", False),  # no offset: UTC
        ("2999-01-01T00:00:00+02:00", False),
        (1_600_000_000.5, True),  # seconds since the epoch, as older records stored it (2020)
        (1_600_000_000, True),
        (4_000_000_000.5, False),  # 2096 (fixed values: every test worker collects the same ids)
        (4_000_000_000, False),
        ("tomorrow", True),  # an expiry keygate cannot read counts as passed
        ("", True),
        (True, True),
        (math.nan, True),
        (-1, True),
        (1e300, True),
        ({"at": "2999-01-01"}, True),
        ("2999-01-01T00:00:00Z" + " " * 60, True),  # longer than any time
    ],
)
def test_expiry_in_any_stored_form(expires_at: Any, is_expired: bool) -> None:
    assert _expired(decide(AccessPolicy(), _ctx({"expires_at": expires_at}))) is is_expired
    # The same rule for a team's expiry, whatever the key says.
    assert _expired(decide(AccessPolicy(), _ctx({"models": ["*"]}, {"expires_at": expires_at}))) is is_expired


def test_an_explicit_null_expiry_never_expires() -> None:
    assert decide(AccessPolicy(), _ctx({"expires_at": None})) is None


# -- AccessPolicy: networks, routes, declared size -----------------------------------------------


def test_client_networks_of_key_and_team() -> None:
    policy = {"allow_ips": ["10.0.0.0/8", "2001:db8::/32"]}
    assert decide(AccessPolicy(), _ctx(policy, client="10.1.2.3")) is None
    assert decide(AccessPolicy(), _ctx(policy, client="2001:db8::7")) is None
    for client in ("127.0.0.1", "::1", "11.0.0.1"):
        err = decide(AccessPolicy(), _ctx(policy, client=client))
        assert isinstance(err, PermissionDenied) and err.status == 403 and err.code == "ip_not_allowed"
        assert err.message == "This key may not be used from your network."
    # A host address given loosely (host bits set) still means its network.
    assert decide(AccessPolicy(), _ctx({"allow_ips": ["10.1.2.3/8"]}, client="10.200.0.1")) is None
    # No resolved client address: refused rather than let through.
    ctx = _ctx(policy, client="10.1.2.3")
    ctx.client_addr = None
    assert isinstance(decide(AccessPolicy(), ctx), PermissionDenied)
    # The team's networks apply too.
    err = decide(AccessPolicy(), _ctx(policy, {"allow_ips": ["10.9.0.0/16"]}, client="10.1.2.3"))
    assert isinstance(err, PermissionDenied) and err.code == "ip_not_allowed"


def test_routes_of_key_and_team() -> None:
    policy = {"routes": ["embeddings", "models"]}
    assert (
        decide(AccessPolicy(), _ctx(policy, path="/v1/embeddings", body={"model": "m", "input": "x"})) is None
    )
    assert decide(AccessPolicy(), _ctx(policy, path="/v1/models", method="GET")) is None
    assert decide(AccessPolicy(), _ctx(policy, path="/v1/models/gpt-4o", method="GET")) is None
    err = decide(AccessPolicy(), _ctx(policy))
    assert isinstance(err, PermissionDenied) and err.code == "route_not_allowed"
    assert err.message == "This key may not use the chat.completions endpoint."
    unrouted = _ctx(policy, path="/v1/somewhere")
    assert unrouted.route is None
    err = decide(AccessPolicy(), unrouted)
    assert isinstance(err, PermissionDenied) and err.message == "This key may not use the - endpoint."
    err = decide(AccessPolicy(), _ctx({}, {"routes": ["embeddings"]}))
    assert isinstance(err, PermissionDenied) and err.code == "route_not_allowed"


def test_a_declared_body_over_the_cap_is_refused_before_it_is_read() -> None:
    small = _ctx({"max_body_bytes": 10})
    assert int(small.headers["content-length"]) > 10
    err = decide(AccessPolicy(), small)
    assert isinstance(err, PayloadTooLarge) and err.status == 413 and err.code == "payload_too_large"
    assert err.message == "Request body is larger than this key's 10 byte limit."
    # A chunked upload declares nothing: the RequestPolicy counts it once read.
    chunked = _ctx({"max_body_bytes": 10}, headers={"content-length": ""})
    assert decide(AccessPolicy(), chunked) is None
    assert decide(AccessPolicy(), _ctx({"max_body_bytes": 10_000})) is None
    assert isinstance(decide(AccessPolicy(), _ctx({}, {"max_body_bytes": 10})), PayloadTooLarge)


def test_a_key_without_rules_passes_both_guards_untouched() -> None:
    ctx = _ctx()
    body = ctx.body
    assert decide(AccessPolicy(), ctx) is None and decide(RequestPolicy(), ctx) is None
    assert ctx.body is body and not ctx.json_changed


# -- RequestPolicy -------------------------------------------------------------------------------


def test_the_body_read_is_held_to_the_cap() -> None:
    ctx = _ctx({"max_body_bytes": 20}, headers={"content-length": ""})
    assert len(ctx.body) > 20
    err = decide(RequestPolicy(), ctx)
    assert (
        isinstance(err, PayloadTooLarge)
        and err.message == "Request body is larger than this key's 20 byte limit."
    )
    assert decide(RequestPolicy(), _ctx({"max_body_bytes": len(ctx.body)})) is None  # exactly the cap


def test_allowed_models() -> None:
    policy = {"models": ["gpt-4o*", "o3"]}
    assert decide(RequestPolicy(), _ctx(policy, body={**CHAT, "model": "gpt-4o"})) is None
    assert decide(RequestPolicy(), _ctx(policy, body={**CHAT, "model": "o3"})) is None
    err = decide(RequestPolicy(), _ctx(policy, body={**CHAT, "model": "o3-mini"}))
    assert isinstance(err, PermissionDenied) and err.code == "model_not_allowed" and err.param == "model"
    assert err.message == "This key may not use the model 'o3-mini'."
    long = "x" * 500
    err = decide(RequestPolicy(), _ctx(policy, body={**CHAT, "model": long}))
    assert (
        isinstance(err, PermissionDenied) and err.message == f"This key may not use the model '{'x' * 200}'."
    )
    # A request without a body (listing models, say) has no model to check.
    assert decide(RequestPolicy(), _ctx(policy, method="GET", path="/v1/models")) is None
    # The key's list and the team's list both apply.
    err = decide(
        RequestPolicy(),
        _ctx({"models": ["gpt-4o*"]}, {"models": ["gpt-4o-mini"]}, body={**CHAT, "model": "gpt-4o"}),
    )
    assert isinstance(err, PermissionDenied)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"messages": []}),
        ("/v1/responses", {"input": "hi", "prompt": {"id": "pmpt_1"}}),  # a stored prompt's model
        ("/v1/moderations", {"input": "x"}),  # OpenAI's default moderation model
        ("/v1/images/generations", {"prompt": "x"}),  # OpenAI's default image model
        ("/v1/embeddings", {"input": "x", "model": None}),
    ],
)
def test_an_allowlist_refuses_a_request_that_names_no_model(path: str, body: dict[str, Any]) -> None:
    """Today a request without a model was forwarded, and OpenAI picked a model for it."""
    ctx = _ctx({"models": ["gpt-4o*"]}, path=path, body=body)
    ctx.model = None  # as the body guard leaves it
    err = decide(RequestPolicy(), ctx)
    assert isinstance(err, PermissionDenied) and err.code == "model_not_allowed" and err.param == "model"
    assert err.message == "This key may only use the models it allows; the request names no model."
    team = _ctx({}, {"models": ["gpt-4o*"]}, path=path, body=body)  # a team's list the same
    team.model = None
    assert isinstance(decide(RequestPolicy(), team), PermissionDenied)
    assert decide(RequestPolicy(), _ctx({"max_output_tokens": 5}, path=path, body=body)) is None


def test_names_model() -> None:
    assert names_model(routes.match("POST", "/v1/chat/completions"))
    assert names_model(routes.match("POST", "/v1/audio/transcriptions"))
    assert names_model(routes.match("POST", "/v1/moderations"))
    assert not names_model(routes.match("GET", "/v1/models"))
    assert not names_model(routes.match("GET", "/v1/responses/resp_1"))
    assert not names_model(routes.match("POST", "/v1/responses/resp_1/cancel"))  # an action
    assert not names_model(None)


def _sent(ctx: Context) -> dict[str, Any]:
    sent: dict[str, Any] = orjson.loads(ctx.upstream_body())
    assert sent == ctx.json  # the body sent is the JSON the guards see
    return sent


@pytest.mark.parametrize(
    ("path", "asked", "expected"),
    [
        ("/v1/chat/completions", {"max_tokens": 5000}, {"max_tokens": 100}),
        ("/v1/chat/completions", {"max_completion_tokens": 50}, {"max_completion_tokens": 50}),
        ("/v1/chat/completions", {}, {"max_completion_tokens": 100}),
        (
            "/v1/chat/completions",
            {"max_tokens": 500, "max_completion_tokens": 20},
            {"max_tokens": 100, "max_completion_tokens": 20},
        ),
        ("/v1/chat/completions", {"max_tokens": None}, {"max_tokens": 100}),  # null: not given
        ("/v1/responses", {"max_output_tokens": 9999}, {"max_output_tokens": 100}),
        ("/v1/responses", {}, {"max_output_tokens": 100}),
        ("/v1/completions", {}, {"max_tokens": 100}),
    ],
)
def test_output_tokens_are_clamped_to_the_cap(
    path: str, asked: dict[str, Any], expected: dict[str, Any]
) -> None:
    ctx = _ctx({"max_output_tokens": 100}, path=path, body={"model": "gpt-4o", **asked})
    assert decide(RequestPolicy(), ctx) is None
    sent = _sent(ctx)
    assert {k: v for k, v in sent.items() if k.startswith("max_")} == expected


def test_the_smaller_of_key_and_team_caps_wins() -> None:
    for key_cap, team_cap in [(500, 50), (50, 500)]:
        ctx = _ctx(
            {"max_output_tokens": key_cap}, {"max_output_tokens": team_cap}, body={**CHAT, "max_tokens": 400}
        )
        assert decide(RequestPolicy(), ctx) is None
        assert _sent(ctx)["max_tokens"] == 50


def test_routes_without_an_output_field_get_none_added() -> None:
    ctx = _ctx({"max_output_tokens": 10}, path="/v1/embeddings", body={"model": "m", "input": "x"})
    assert decide(RequestPolicy(), ctx) is None
    assert not ctx.json_changed and "max_tokens" not in _sent(ctx)
    # A request the policy leaves alone is not serialised again.
    small = _ctx({"max_output_tokens": 10}, body={**CHAT, "max_tokens": 5})
    same = small.body
    assert decide(RequestPolicy(), small) is None and small.body is same


def test_a_body_that_is_not_json_is_not_clamped() -> None:
    ctx = _ctx({"max_output_tokens": 10}, path="/v1/audio/transcriptions", body={"model": "whisper-1"})
    ctx.json = None  # a multipart upload: no JSON to clamp
    ctx.body = b"--x\r\n..."
    assert decide(RequestPolicy(), ctx) is None and ctx.body == b"--x\r\n..."


# -- through a real gateway ----------------------------------------------------------------------


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


def _store_policy(gw: Gateway, key_id: str, policy: dict[str, Any]) -> None:
    """Write a key's policy straight into the gateway's database, as an older keygate (or a
    hand edit) may have left it: the CLI and admin API would store a canonical form."""
    store = open_store(ensure_pepper(gw.settings()))  # (the gateway's pepper: the audit chain's key)
    try:
        audit = AuditRecord(time.time(), "test", "test", "keys.update", key_id)
        assert store.update_key(key_id, {"policy": policy}, audit) is not None
    finally:
        store.close()


def test_a_stored_numeric_expiry_is_enforced(gw: Gateway, mock: MockUpstream) -> None:
    key = gw.create_key("epoch")
    _store_policy(gw, key["id"], {"expires_at": time.time() + 3600})
    chat(sdk(gw, key["key"]))  # an hour to go: it works
    _store_policy(gw, key["id"], {"expires_at": int(time.time()) - 1})
    with pytest.raises(openai.AuthenticationError, match="expired") as exc:
        chat(sdk(gw, key["key"]))
    assert exc.value.code == "expired_api_key"
    assert len(mock.requests) == 1


def test_a_stored_unreadable_expiry_counts_as_expired(gw: Gateway, mock: MockUpstream) -> None:
    key = gw.create_key("garbled")
    for unreadable in ("next tuesday", "2999-13-45T00:00:00Z", True, [2999]):
        _store_policy(gw, key["id"], {"expires_at": unreadable})
        with pytest.raises(openai.AuthenticationError, match="expired") as exc:
            chat(sdk(gw, key["key"]))
        assert exc.value.code == "expired_api_key"
    assert mock.requests == []


# -- a model allowlist through a real gateway: JSON without a model, multipart uploads -----------

AUDIO = b"ID3\x04\x00" + bytes(range(256)) * 8  # some bytes, CRLFs and all, as an upload has


def _multipart(gw: Gateway, key: str, path: str, *parts: tuple[str, bytes]) -> httpx.Response:
    body = b"".join(f"--b\r\nContent-Disposition: {d}\r\n\r\n".encode() + v + b"\r\n" for d, v in parts)
    return httpx.post(
        f"{gw.url}{path}",
        content=body + b"--b--\r\n",
        headers={"authorization": f"Bearer {key}", "content-type": "multipart/form-data; boundary=b"},
    )


def test_an_allowlisted_key_must_name_a_model(gw: Gateway, mock: MockUpstream) -> None:
    key = gw.create_key("must-name", "--allow-model", "gpt-4o*", "--allow-model", "omni-moderation-*")["key"]
    client = sdk(gw, key)
    with pytest.raises(openai.PermissionDeniedError, match="names no model") as exc:
        client.moderations.create(input="x")  # OpenAI would pick its default model
    assert exc.value.code == "model_not_allowed"
    client.moderations.create(input="x", model="omni-moderation-latest")
    for body in ({"messages": [{"role": "user", "content": "hi"}]}, {"model": None, "messages": []}):
        r = httpx.post(f"{gw.url}/chat/completions", json=body, headers={"authorization": f"Bearer {key}"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_allowed", r.text
    assert (
        _multipart(
            gw, key, "/audio/transcriptions", ('form-data; name="file"; filename="a"', AUDIO)
        ).status_code
        == 403
    )
    assert [r.path for r in mock.requests] == ["/v1/moderations"]


def test_uploads_through_the_sdk_pass_an_allowlist(gw: Gateway, mock: MockUpstream) -> None:
    """The SDK sends the model before the file; today keygate read the last line of the upload
    as the model and refused its own client."""
    key = gw.create_key("uploads", "--allow-model", "whisper-1", "--allow-model", "gpt-image-1")["key"]
    client = sdk(gw, key)
    text = client.audio.transcriptions.create(model="whisper-1", file=("speech.mp3", AUDIO, "audio/mpeg"))
    assert text.text
    mock.reply_next(200, {"created": 1, "data": [{"b64_json": "iVBORw0KGgo="}]})
    image = client.images.edit(
        model="gpt-image-1", image=("a.png", b"\x89PNG\r\n\x1a\n" + AUDIO), prompt="a hat"
    )
    assert image.data
    with pytest.raises(openai.PermissionDeniedError, match="whisper-2") as exc:
        client.audio.transcriptions.create(model="whisper-2", file=("speech.mp3", AUDIO))
    assert exc.value.code == "model_not_allowed"
    paths = [r.path for r in mock.requests]
    assert paths == ["/v1/audio/transcriptions", "/v1/images/edits"]
    assert b'name="model"\r\n\r\nwhisper-1\r\n' in mock.requests[0].body  # forwarded as sent


@pytest.mark.parametrize(
    ("parts", "status", "code"),
    [
        # a forbidden model, and an allowed name in a later field: today the later one was read
        (
            (("form-data; name=model", b"o3"), ("form-data; name=prompt", b"gpt-4o-mini")),
            403,
            "model_not_allowed",
        ),
        (
            (
                ('form-data; name="model"', b"o3"),
                ('form-data; name="file"; filename="a"', b"x\r\n\r\ngpt-4o-mini"),
            ),
            403,
            "model_not_allowed",
        ),
        ((("form-data; NAME=model; x=1", b"o3"),), 403, "model_not_allowed"),  # unquoted: today unseen
        (
            (('form-data; name="model"', b"gpt-4o-mini"), ("form-data; name=model", b"o3")),
            400,
            "invalid_multipart",
        ),
        (
            (('form-data; name="model"', b"gpt-4o-mini"), ('form-data; name="MODEL"', b"o3")),
            400,
            "invalid_multipart",
        ),
    ],
)
def test_a_multipart_model_is_read_as_the_upstream_reads_it(
    gw: Gateway, mock: MockUpstream, parts: tuple[tuple[str, bytes], ...], status: int, code: str
) -> None:
    key = gw.create_key("mp", "--allow-model", "gpt-4o-mini")["key"]
    r = _multipart(gw, key, "/audio/transcriptions", *parts, ('form-data; name="file"; filename="a"', AUDIO))
    assert r.status_code == status and r.json()["error"]["code"] == code, r.text
    if status == 403:
        assert "'o3'" in r.json()["error"]["message"]
    assert mock.requests == []
