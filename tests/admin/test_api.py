"""The admin API (``keygate.admin.api``) on its own listener: admin tokens and roles, every route,
the audit trail, input checks, and errors in OpenAI's shape (a real gateway in this process)."""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from keygate.errors import KeygateError
from keygate.testing import MockUpstream

from ..helpers import Gateway, assert_no_secret_written
from .common import Admin, assert_openai_error, eventually

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def admin(upstream: MockUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Admin]:
    with Gateway(tmp_path_factory.mktemp("admin"), upstream.url) as gw:
        yield Admin(gw)


def test_unauthenticated_and_wrong_tokens_get_401(admin: Admin) -> None:
    client_key = admin.gw.create_key("not-an-admin")["key"]
    revoked = json.loads(admin.gw.cli("admin-tokens", "create", "--role", "admin", "--json").stdout)
    admin.gw.secrets.append(revoked["token"])
    admin.gw.cli("admin-tokens", "revoke", revoked["id"])
    wrong = ["kga_" + "A" * 38, client_key, revoked["token"], "garbage"]
    for path in ("/admin/keys", "/admin/teams", "/admin/usage", "/admin/audit", "/openapi.json"):
        err = assert_openai_error(admin.client(None).get(path), 401)
        assert err["code"] == "missing_admin_token"
        for token in wrong:
            r = admin.client(token=token).get(path)
            assert assert_openai_error(r, 401)["code"] == "invalid_admin_token"
            assert token not in r.text
    # Liveness is open (documented): it says nothing but "ok".
    assert admin.client(None).get("/healthz").json() == {"status": "ok"}
    listed = json.loads(admin.gw.cli("admin-tokens", "list", "--json").stdout)
    assert {t["role"] for t in listed} == {"admin", "key-manager", "auditor"}
    assert [t["status"] for t in listed if t["id"] == revoked["id"]] == ["revoked"]
    assert all("token" not in t and "hash" not in json.dumps(t) for t in listed)


def test_admin_manages_keys_the_data_plane_obeys(admin: Admin, mock: MockUpstream) -> None:
    api = admin.client("admin")
    team = api.post("/admin/teams", json={"name": "research", "policy": {}})
    assert team.status_code == 201 and team.json()["name"] == "research"
    assert assert_openai_error(api.post("/admin/teams", json={"name": "research"}), 409)["code"] == "conflict"
    created = api.post("/admin/keys", json={"name": "notebook", "team": "research"})
    assert created.status_code == 201
    key = created.json()
    admin.gw.secrets.append(key["key"])
    assert key["key"].startswith("kg_") and key["team_id"] == team.json()["id"]
    # The secret is shown once: never by get or list.
    got = api.get(f"/admin/keys/{key['id']}").json()
    assert "key" not in got and "key_hash" not in got and got["hint"] == "kg_..." + key["key"][-4:]
    assert key["key"] not in api.get("/admin/keys").text
    sdk = openai.OpenAI(base_url=admin.gw.url, api_key=key["key"], max_retries=0)
    assert sdk.models.list().data
    assert len(mock.requests) == 1
    renamed = api.patch(f"/admin/keys/{key['id']}", json={"name": "laptop", "team": None})
    assert renamed.json()["name"] == "laptop" and renamed.json()["team_id"] is None
    assert api.post(f"/admin/keys/{key['id']}/revoke").json()["status"] == "revoked"
    with pytest.raises(openai.AuthenticationError):
        sdk.models.list()
    assert len(mock.requests) == 1  # the revoked key never reached the upstream
    usage = eventually(lambda: api.get("/admin/usage", params={"key": key["id"]}).json())  # batch flush
    assert [u["key_id"] for u in usage] == [key["id"]] and usage[0]["requests"] >= 1
    assert_openai_error(api.get("/admin/keys/key_missing"), 404)
    assert_openai_error(api.post("/admin/keys", json={"name": ""}), 400)
    assert_openai_error(api.post("/admin/keys", json={"name": "x", "extra": 1}), 400)
    assert_openai_error(api.post("/admin/keys", content=b"{not json"), 400)
    assert_openai_error(api.post("/admin/keys", json={"name": "x", "team": "nope"}), 404)
    assert_openai_error(api.delete("/admin/keys"), 405)
    assert_openai_error(api.get("/admin/nothing-here"), 404)


def test_roles(admin: Admin, mock: MockUpstream) -> None:
    manager, auditor = admin.client("key-manager"), admin.client("auditor")
    made = manager.post("/admin/keys", json={"name": "by-manager"})
    assert made.status_code == 201
    admin.gw.secrets.append(made.json()["key"])
    assert manager.post("/admin/teams", json={"name": "managers"}).status_code == 201
    assert manager.patch("/admin/teams/managers", json={"policy": {"rpm": 60}}).json()["policy"] == {
        "rpm": 60
    }
    for path in ("/admin/usage", "/admin/audit", "/admin/tokens"):
        assert assert_openai_error(manager.get(path), 403)["type"] == "permission_denied"
    assert_openai_error(manager.post("/admin/tokens", json={"role": "admin"}), 403)
    for path in ("/admin/keys", "/admin/teams", "/admin/usage", "/admin/audit", "/admin/tokens"):
        assert auditor.get(path).status_code == 200
    assert_openai_error(auditor.post("/admin/keys", json={"name": "nope"}), 403)
    assert_openai_error(auditor.post(f"/admin/keys/{made.json()['id']}/revoke"), 403)
    assert_openai_error(auditor.patch("/admin/teams/managers", json={"policy": {}}), 403)
    assert auditor.get(f"/admin/keys/{made.json()['id']}").json()["status"] == "active"
    assert not mock.requests


def test_audit_trail_names_actor_origin_and_hides_secrets(admin: Admin) -> None:
    api = admin.client("admin")
    made = api.post("/admin/keys", json={"name": "audited", "policy": {"models": ["kg_" + "x" * 30]}})
    admin.gw.secrets.append(made.json()["key"])
    api.post(f"/admin/keys/{made.json()['id']}/revoke")
    admin.client("auditor").post("/admin/keys", json={"name": "denied"})
    entries = admin.client("auditor").get("/admin/audit", params={"limit": 50}).json()
    by_action = {(e["action"], e["target"]): e for e in entries}
    create = by_action[("keys.create", made.json()["id"])]
    assert create["actor"] == admin.tokens["admin"]["id"] and create["origin"] == "127.0.0.1"
    assert create["ts"].endswith("Z") and create["details"]["name"] == "audited"
    assert "kg_" + "x" * 30 not in json.dumps(entries)  # key-shaped values are redacted
    assert by_action[("keys.revoke", made.json()["id"])]["actor"] == admin.tokens["admin"]["id"]
    denied = [e for e in entries if e["action"] == "denied"]
    assert denied[0]["actor"] == admin.tokens["auditor"]["id"] and denied[0]["target"] == "/admin/keys"
    only = admin.client("admin").get("/admin/audit", params={"action": "keys.revoke", "limit": 1}).json()
    assert [e["action"] for e in only] == ["keys.revoke"]
    assert_openai_error(api.get("/admin/audit", params={"limit": "0"}), 400)
    assert_openai_error(api.get("/admin/audit", params={"limit": " 5"}), 400)


def test_awkward_json_is_stored_or_refused_never_a_500(admin: Admin) -> None:
    api = admin.client("admin")
    big = api.post("/admin/teams", json={"name": "big-ints", "policy": {"max_output_tokens": -(2**90)}})
    assert_openai_error(big, 400)
    assert_openai_error(api.post("/admin/teams", json={"name": "floats", "policy": {"rpm": 5.5e286}}), 400)
    lone = api.post(
        "/admin/teams", content=b'{"name": "\\ud800"}', headers={"content-type": "application/json"}
    )
    assert_openai_error(lone, 400)
    assert_openai_error(api.post("/admin/teams", content=b'{"name": "x", "policy": {"a": NaN}}'), 400)
    assert_openai_error(api.post("/admin/teams", content=b"[" * 100000), 400)


def test_policies_from_the_api_are_validated_and_enforced(admin: Admin, mock: MockUpstream) -> None:
    api = admin.client("admin")
    for bad in (
        {"allow_ips": ["not-a-network"]},
        {"routes": ["admin"]},
        {"models": "gpt-4o"},
        {"rpm": "ten"},
        {"budget_usd": "lots"},
        {"expires_at": "someday"},
        {"unheard_of": 1},
    ):
        err = assert_openai_error(api.post("/admin/keys", json={"name": "bad", "policy": bad}), 400)
        assert err["param"] == "policy"
    made = api.post("/admin/keys", json={"name": "narrow", "policy": {"models": ["gpt-4o-mini"], "rpm": 100}})
    assert made.status_code == 201
    key = made.json()
    admin.gw.secrets.append(key["key"])
    assert key["policy"] == {"models": ["gpt-4o-mini"], "rpm": 100}
    sdk = openai.OpenAI(base_url=admin.gw.url, api_key=key["key"], max_retries=0)
    with pytest.raises(openai.PermissionDeniedError, match="gpt-4o"):
        sdk.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert sdk.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert [r.json()["model"] for r in mock.requests] == ["gpt-4o-mini"]
    assert_openai_error(api.patch(f"/admin/keys/{key['id']}", json={"policy": {"allow_ips": ["x"]}}), 400)


def test_teams_by_id_or_name_and_their_errors(admin: Admin) -> None:
    api = admin.client("admin")
    made = api.post("/admin/teams", json={"name": "lookup", "policy": {"rpm": 5}}).json()
    assert api.get(f"/admin/teams/{made['id']}").json() == api.get("/admin/teams/lookup").json() == made
    assert made in api.get("/admin/teams").json()
    assert_openai_error(api.get("/admin/teams/no-such-team"), 404)
    assert_openai_error(api.patch("/admin/teams/no-such-team", json={"policy": {}}), 404)
    assert assert_openai_error(api.patch("/admin/teams/lookup", json={}), 400)["param"] == "policy"
    assert assert_openai_error(api.post("/admin/teams", json={"policy": {}}), 400)["param"] == "name"
    assert api.patch("/admin/teams/lookup", json={"policy": {}}).json()["policy"] == {}


def test_admin_tokens_over_the_api(admin: Admin) -> None:
    api = admin.client("admin")
    made = api.post("/admin/tokens", json={"role": "auditor", "name": "dashboard"})
    assert made.status_code == 201
    token = made.json()
    admin.gw.secrets.append(token["token"])
    assert token["token"].startswith("kga_") and token["role"] == "auditor" and token["name"] == "dashboard"
    listed = api.get("/admin/tokens").json()
    assert token["id"] in {t["id"] for t in listed} and token["token"] not in json.dumps(listed)
    reader = admin.client(token=token["token"])
    assert reader.get("/admin/keys").status_code == 200
    revoked = api.post(f"/admin/tokens/{token['id']}/revoke")
    assert revoked.json()["status"] == "revoked" and revoked.json()["revoked_at"].endswith("Z")
    assert assert_openai_error(reader.get("/admin/keys"), 401)["code"] == "invalid_admin_token"
    assert_openai_error(api.post("/admin/tokens/adm_nope/revoke"), 404)
    assert assert_openai_error(api.post("/admin/tokens", json={"role": "root"}), 400)["param"] == "role"
    assert assert_openai_error(api.post("/admin/tokens", json={"role": 7}), 400)["param"] == "role"
    assert_openai_error(api.post("/admin/tokens", json={"name": "no role"}), 400)


def test_request_checks(admin: Admin) -> None:
    api = admin.client("admin")
    unexpected = assert_openai_error(api.get("/admin/keys", params={"verbose": "1"}), 400)
    assert unexpected["param"] == "verbose"
    assert_openai_error(api.get("/admin/audit?limit=5&limit=6"), 400)  # repeated
    assert_openai_error(api.get("/admin/audit", params={"limit": "1001"}), 400)
    assert_openai_error(api.post("/admin/keys", content=b""), 400)
    assert_openai_error(api.post("/admin/keys", content=b"   "), 400)
    assert_openai_error(api.post("/admin/keys", json=["name", "x"]), 400)
    too_big = json.dumps({"name": "x" * (1024 * 1024)}).encode()
    assert "too large" in assert_openai_error(api.post("/admin/keys", content=too_big), 400)["message"]
    not_allowed = api.delete("/admin/keys")
    assert_openai_error(not_allowed, 405)
    assert sorted(m.strip() for m in not_allowed.headers["allow"].split(",")) == ["GET", "HEAD", "POST"]
    # Not a bearer token: as if none were sent.
    basic = httpx.get(f"{admin.gw.admin_url}/admin/keys", headers={"Authorization": "Basic YTpi"})
    assert assert_openai_error(basic, 401)["code"] == "missing_admin_token"
    empty = httpx.get(f"{admin.gw.admin_url}/admin/keys", headers={"Authorization": "Bearer"})
    assert assert_openai_error(empty, 401)["code"] == "missing_admin_token"


def test_bug1_numeric_expiry_from_admin_api_is_enforced(tmp_path: Path, mock: MockUpstream) -> None:
    """Regression (issue 10, bug 1): an epoch-number ``expires_at`` from the admin API is enforced."""
    with Gateway(tmp_path, mock.url) as gw:
        token = json.loads(gw.cli("init", "--json").stdout)["token"]
        admin = httpx.Client(base_url=gw.admin_url, headers={"authorization": f"Bearer {token}"})
        created = admin.post("/admin/keys", json={"name": "short", "policy": {"expires_at": time.time() - 5}})
        assert created.status_code == 201, created.text
        assert created.json()["policy"]["expires_at"].endswith("Z")  # stored in the one ISO form
        client = openai.OpenAI(base_url=gw.url, api_key=created.json()["key"], max_retries=0)
        with pytest.raises(openai.AuthenticationError) as info:
            client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
        assert info.value.code == "expired_api_key"
        assert mock.requests == []


def test_failed_logins_never_raise_a_shared_exception_instance(admin: Admin) -> None:
    """Regression: a module-level error raised on every failed login kept the traceback of the
    last one (and every frame in it) alive. After failed logins of every kind through the real
    admin listener, no module-level KeygateError of keygate holds a traceback."""
    bad = [None, "kga_" + "D" * 38, "not-a-token", admin.gw.create_key("not-admin")["key"]]
    for _ in range(3):
        for token in bad:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            r = httpx.get(f"{admin.gw.admin_url}/admin/keys", headers=headers)
            assert r.status_code == 401
        assert admin.client("key-manager").get("/admin/audit").status_code == 403
    found = {}
    for name, module in list(sys.modules.items()):
        if name == "keygate" or name.startswith("keygate."):
            for attr, value in list(vars(module).items()):
                if isinstance(value, KeygateError):
                    found[f"{name}.{attr}"] = value
    assert "keygate.upstream_pool.NO_KEYS" in found  # the scan does see module-level errors
    held = sorted(where for where, err in found.items() if err.__traceback__ is not None)
    assert held == []


def test_an_internal_error_is_a_500_in_openai_shape(tmp_path: Path, upstream: MockUpstream) -> None:
    with Gateway(tmp_path, upstream.url) as gw:
        token = json.loads(gw.cli("init", "--json").stdout)["token"]
        gw.secrets.append(token)
        db = sqlite3.connect(tmp_path / "keygate.db")
        db.execute("DROP TABLE teams")  # the store now fails underneath the API
        db.commit()
        db.close()
        r = httpx.get(f"{gw.admin_url}/admin/teams", headers={"Authorization": f"Bearer {token}"})
        err = assert_openai_error(r, 500)
        assert err["type"] == "server_error" and "teams" not in err["message"]
        assert any(e["event"] == "admin API internal error" for e in gw.log_entries())
    assert_no_secret_written(gw.written_files(), gw.secrets)


def test_no_admin_secret_is_written(admin: Admin) -> None:
    """Runs last in this module: every token and key issued above, searched for in every file."""
    admin.client("admin").get("/admin/keys")
    admin.client(token="kga_" + "C" * 38).get("/admin/keys")
    admin.gw.secrets.append("kga_" + "C" * 38)
    files = list(admin.gw.written_files())
    assert any(p.name == "keygate.db" for p in files) and any(p.name == "stderr.log" for p in files)
    assert_no_secret_written(files, admin.gw.secrets)


# Numbers no policy field may hold, as raw JSON text: 1e999 and -1e999 parse to infinities,
# NaN/Infinity are JavaScript, the rest are negative, zero-or-less or absurdly large.
BAD_NUMBERS = ["1e999", "-1e999", "NaN", "Infinity", "-Infinity", "-1", "0", "1e300", "18446744073709551616"]
NUMBER_FIELDS = [
    "rps",
    "rpm",
    "rph",
    "rpd",
    "tpm",
    "max_concurrent",
    "max_body_bytes",
    "max_output_tokens",
    "rotate_every",
    "budget_usd",
    "budget_tokens",
    "expires_at",
]
# Characters that would act on a terminal rather than show in `keys list`: newline, carriage
# return, ESC (an ANSI sequence), NUL, DEL, a C1 control (CSI), a line separator.
CONTROL = ["\n", "\r", "\x1b[31m", "\x00", "\x7f", "\x9b", "\u2028"]


def _stored(admin: Admin) -> tuple[str, str, str, int]:
    """What the admin API would show of every key, team and token, and how long the audit is."""
    api = admin.client("admin")
    listed = [api.get(p) for p in ("/admin/keys", "/admin/teams", "/admin/tokens")]
    assert all(r.status_code == 200 for r in listed), [r.text for r in listed]
    audit = api.get("/admin/audit", params={"limit": 1000})
    assert audit.status_code == 200, audit.text
    return listed[0].text, listed[1].text, listed[2].text, len(audit.json())


def test_non_finite_and_out_of_range_numbers_are_refused_before_anything_is_stored(admin: Admin) -> None:
    api = admin.client("admin")
    key = api.post("/admin/keys", json={"name": "numbers"}).json()
    admin.gw.secrets.append(key["key"])
    team = api.post("/admin/teams", json={"name": "numbers"}).json()
    before = _stored(admin)
    raw = {"content-type": "application/json"}
    writes = [
        ("POST", "/admin/keys", '{{"name": "n", "policy": {}}}'),
        ("PATCH", f"/admin/keys/{key['id']}", '{{"policy": {}}}'),
        ("POST", "/admin/teams", '{{"name": "n", "policy": {}}}'),
        ("PATCH", f"/admin/teams/{team['id']}", '{{"policy": {}}}'),
    ]
    cases = [(f, n, n) for f in NUMBER_FIELDS for n in BAD_NUMBERS if (f, n) != ("expires_at", "0")]
    # (the epoch itself is a time: a key born expired)
    cases += [
        (f, n, f'{{"amount": {n}, "period": "day"}}')
        for f in ("budget_usd", "budget_tokens")
        for n in BAD_NUMBERS
    ]
    for i, (field, number, value) in enumerate(cases):
        method, path, template = writes[i % len(writes)]  # each write in turn, to keep this quick
        r = api.request(
            method, path, content=template.format(f'{{"{field}": {value}}}').encode(), headers=raw
        )
        err = assert_openai_error(r, 400)
        assert err["type"] == "invalid_request_error", err
        if number in ("NaN", "Infinity", "-Infinity"):  # not JSON: the body is refused as a whole
            assert err["message"] == "the request body is not valid JSON"
        else:
            assert err["param"] == "policy" and f"policy.{field}" in err["message"], (field, number, err)
    # Nothing was written (no key, no team, no change, no audit row), and every list still reads.
    assert _stored(admin) == before
    assert "numbers" in admin.gw.cli("keys", "list").stdout


def test_control_characters_in_names_and_policy_text_are_refused_before_anything_is_stored(
    admin: Admin,
) -> None:
    api = admin.client("admin")
    key = api.post("/admin/keys", json={"name": "plain"}).json()
    admin.gw.secrets.append(key["key"])
    team = api.post("/admin/teams", json={"name": "plain"}).json()
    before = _stored(admin)
    for char in CONTROL:
        text = f"ok{char}id  forged-row"
        for method, path, body, param in (
            ("POST", "/admin/keys", {"name": text}, "name"),
            ("PATCH", f"/admin/keys/{key['id']}", {"name": text}, "name"),
            ("POST", "/admin/teams", {"name": text}, "name"),
            ("POST", "/admin/tokens", {"role": "auditor", "name": text}, "name"),
            ("POST", "/admin/keys", {"name": "n", "team": text}, "team"),
            ("POST", "/admin/keys", {"name": "n", "upstream": text}, "upstream"),
            # Policy text is shown in `keys list` too (the POLICY column).
            ("POST", "/admin/keys", {"name": "n", "policy": {"models": ["gpt-4o", text]}}, "policy"),
            ("PATCH", f"/admin/keys/{key['id']}", {"policy": {"models": [text]}}, "policy"),
            ("POST", "/admin/teams", {"name": "n", "policy": {"models": [text]}}, "policy"),
            ("PATCH", f"/admin/teams/{team['id']}", {"policy": {"models": [text]}}, "policy"),
        ):
            err = assert_openai_error(api.request(method, path, json=body), 400)
            assert err["param"] == param and "control characters" in err["message"], (path, body, err)
    assert _stored(admin) == before
    table = admin.gw.cli("keys", "list").stdout
    assert "forged-row" not in table and "\x1b" not in table


def test_rows_with_non_finite_numbers_from_an_older_version_still_list(
    upstream: MockUpstream, tmp_path: Path
) -> None:
    with Gateway(tmp_path, upstream.url) as gw:
        admin = Admin(gw)
        api = admin.client("admin")
        key = api.post("/admin/keys", json={"name": "legacy", "policy": {"rpm": 5}}).json()
        gw.secrets.append(key["key"])
        # What an older version stored for `1e999` in a budget: infinity, as JSON text.
        db = sqlite3.connect(tmp_path / "keygate.db")
        with db:
            db.execute(
                "UPDATE keys SET policy = ? WHERE id = ?",
                ('{"rpm": 5, "budget_usd": {"amount": 1e999, "period": "day"}}', key["id"]),
            )
            db.execute(
                "UPDATE audit SET details = ? WHERE target = ?", ('{"policy": {"rpm": NaN}}', key["id"])
            )
        db.close()
        listed = api.get("/admin/keys")
        assert listed.status_code == 200, listed.text
        [row] = [k for k in listed.json() if k["id"] == key["id"]]
        assert row["policy"] == {"rpm": 5, "budget_usd": {"amount": None, "period": "day"}}
        assert api.get(f"/admin/keys/{key['id']}").json()["policy"]["budget_usd"]["amount"] is None
        audit = api.get("/admin/audit")
        assert audit.status_code == 200, audit.text
        assert {"policy": {"rpm": None}} in [e["details"] for e in audit.json()]
        assert "legacy" in gw.cli("keys", "list").stdout
