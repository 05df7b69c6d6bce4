"""The admin plane: its own listener, admin tokens and roles, audit, and the CLI both ways."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from keygate.testing import MockUpstream

from ..helpers import Gateway, assert_no_secret_written, wait_port


class Admin:
    """A running gateway with one admin token per role."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.tokens: dict[str, dict[str, Any]] = {}
        first = json.loads(gw.cli("init", "--json").stdout)
        self.tokens["admin"] = first
        for role in ("key-manager", "auditor"):
            self.tokens[role] = json.loads(gw.cli("admin-tokens", "create", "--role", role, "--json").stdout)
        gw.secrets.extend(t["token"] for t in self.tokens.values())

    def client(self, role: str | None = "admin", token: str | None = None) -> httpx.Client:
        secret = token or (self.tokens[role]["token"] if role else None)
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        return httpx.Client(base_url=self.gw.admin_url, headers=headers, timeout=10)


@pytest.fixture(scope="module")
def admin(upstream: MockUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Admin]:
    with Gateway(tmp_path_factory.mktemp("admin"), upstream.url) as gw:
        pass
        yield Admin(gw)


def eventually(fetch: Any, timeout: float = 10.0) -> Any:
    """Poll until ``fetch()`` returns something non-empty (usage is written in batches)."""
    deadline = time.monotonic() + timeout
    while not (value := fetch()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def assert_openai_error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err: dict[str, Any] = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err


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


def raw_get(host: str, port: int, target: bytes, token: str) -> int:
    """Send a request line exactly as given (no client normalisation); return the status."""
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(
            b"GET "
            + target
            + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + token.encode()
            + b"\r\nConnection: close\r\n\r\n"
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


TRICKS = [
    b"/admin/keys",
    b"/admin/audit",
    b"/admin/",
    b"/admin",
    b"/openapi.json",
    b"/v1/../admin/keys",
    b"/v1/%2e%2e/admin/keys",
    b"/v1/%2E%2E/admin/keys",
    b"/v1/.%2e/admin/keys",
    b"//admin/keys",
    b"/v1//admin/keys",
    b"/v1/%2fadmin/keys",
    b"/v1%2fadmin%2fkeys",
    b"/%61dmin/keys",
    b"/v1/models/../../admin/keys",
    b"/v1/models/%2e%2e%2f%2e%2e%2fadmin%2fkeys",
    b"/./admin/keys",
    b"/ADMIN/keys",
    b"http://127.0.0.1/admin/keys",
]


def test_public_listener_never_serves_admin(admin: Admin, mock: MockUpstream) -> None:
    token = admin.tokens["admin"]["token"]
    for target in TRICKS:
        assert raw_get(admin.gw.host, admin.gw.port, target, token) == 404, target
        # The same tricks on the admin listener do not reach a route either, except the real path.
    assert raw_get(admin.gw.host, admin.gw.admin_port, b"/admin/keys", token) == 200
    assert raw_get(admin.gw.host, admin.gw.admin_port, b"/v1/models", token) == 404
    assert not mock.requests


def test_cli_both_ways(admin: Admin) -> None:
    gw = admin.gw
    remote = ("--admin-url", gw.admin_url)
    gw.env["KEYGATE_ADMIN_TOKEN"] = admin.tokens["key-manager"]["token"]
    try:
        team = json.loads(gw.cli("teams", "create", "cli-remote", "--json", *remote).stdout)
        data = json.loads(
            gw.cli("keys", "create", "--name", "remote", "--team", "cli-remote", "--json", *remote).stdout
        )
        gw.secrets.append(data["key"])
        assert data["key"].startswith("kg_") and data["team_id"] == team["id"]
        plain = gw.cli("keys", "create", "--name", "remote-plain", *remote)
        assert "kg_" in plain.stdout and "cannot show it again" in plain.stderr
        gw.secrets.extend(w for w in plain.stdout.split() if w.startswith("kg_"))
        # Both ways see the same records.
        local = json.loads(gw.cli("keys", "list", "--json").stdout)
        over_http = json.loads(gw.cli("keys", "list", "--json", *remote).stdout)
        assert local == over_http and data["id"] in {k["id"] for k in local}
        assert gw.cli("keys", "list", *remote).stdout == gw.cli("keys", "list").stdout
        updated = json.loads(
            gw.cli("keys", "update", data["id"], "--name", "renamed", "--team", "", "--json", *remote).stdout
        )
        assert updated["name"] == "renamed" and updated["team_id"] is None
        assert "Revoked" in gw.cli("keys", "revoke", data["id"], *remote).stdout
        assert "already revoked" in gw.cli("keys", "revoke", data["id"], *remote).stdout
        assert json.loads(gw.cli("teams", "list", "--json", *remote).stdout) == json.loads(
            gw.cli("teams", "list", "--json").stdout
        )
        assert (
            json.loads(gw.cli("teams", "update", "cli-remote", "--json", *remote).stdout)["id"] == team["id"]
        )
        missing = gw.cli("keys", "revoke", "key_nope", *remote, check=False)
        assert missing.returncode == 1 and "no key" in missing.stderr
        # The key-manager may not read usage; the auditor may, and sees what the local CLI sees.
        denied = gw.cli("usage", *remote, check=False)
        assert denied.returncode == 1 and "may not" in denied.stderr
        gw.env["KEYGATE_ADMIN_TOKEN"] = admin.tokens["auditor"]["token"]
        assert json.loads(gw.cli("usage", "--json", *remote).stdout) == json.loads(
            gw.cli("usage", "--json").stdout
        )
        # The remote actions are audited under the token that did them, not the CLI user.
        audit = json.loads(
            httpx.get(
                f"{gw.admin_url}/admin/audit",
                headers={"Authorization": f"Bearer {admin.tokens['auditor']['token']}"},
            ).text
        )
        assert {e["actor"] for e in audit if e["target"] == data["id"]} == {admin.tokens["key-manager"]["id"]}
        gw.env["KEYGATE_ADMIN_TOKEN"] = "kga_" + "B" * 38
        bad = gw.cli("keys", "list", *remote, check=False)
        assert bad.returncode == 1 and "Invalid or revoked admin token" in bad.stderr
        del gw.env["KEYGATE_ADMIN_TOKEN"]
        none = gw.cli("keys", "list", *remote, check=False)
        assert none.returncode == 2 and "KEYGATE_ADMIN_TOKEN" in none.stderr
        gw.env["KEYGATE_ADMIN_TOKEN"] = admin.tokens["admin"]["token"]
        insecure = gw.cli("keys", "list", "--admin-url", "http://admin.example.com:8081", check=False)
        assert insecure.returncode == 2 and "https is required" in insecure.stderr
    finally:
        gw.env.pop("KEYGATE_ADMIN_TOKEN", None)


def test_no_admin_secret_is_written(admin: Admin) -> None:
    """Runs last in this module: every token and key issued above, searched for in every file."""
    admin.client("admin").get("/admin/keys")
    admin.client(token="kga_" + "C" * 38).get("/admin/keys")
    admin.gw.secrets.append("kga_" + "C" * 38)
    files = list(admin.gw.written_files())
    assert any(p.name == "keygate.db" for p in files) and any(p.name == "stderr.log" for p in files)
    assert_no_secret_written(files, admin.gw.secrets)


def test_init_and_first_serve_print_the_first_token_once(tmp_path: Path, upstream: MockUpstream) -> None:
    gw = Gateway(tmp_path, upstream.url)
    first = gw.cli("init")
    assert first.stdout.count("kga_") == 1 and "cannot show it again" in first.stderr
    again = gw.cli("init")
    assert "kga_" not in again.stdout + again.stderr and "exists already" in again.stdout
    assert json.loads(gw.cli("admin-tokens", "list", "--json").stdout)[0]["role"] == "admin"


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


def test_first_serve_shows_the_first_token_on_its_terminal_only(
    tmp_path: Path, upstream: MockUpstream
) -> None:
    """With a terminal on stderr, the first start prints an admin token there, and in no file."""
    import os
    import pty
    import select
    import subprocess
    import sys

    gw = Gateway(tmp_path, upstream.url)
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "keygate", "--config", str(gw.config_path), "serve"],
        cwd=tmp_path,
        env=gw.env,
        stdout=subprocess.DEVNULL,
        stderr=slave,
    )
    os.close(slave)
    try:
        seen = b""
        deadline = time.monotonic() + 20
        while (m := re.search(rb"kga_[0-9A-Za-z]{38}", seen)) is None:
            assert time.monotonic() < deadline, "no admin token shown on the terminal"
            if select.select([master], [], [], 0.5)[0]:
                seen += os.read(master, 4096)
        token = m.group().decode()
        wait_port(gw.host, gw.admin_port, proc=proc)
        r = httpx.get(f"{gw.admin_url}/admin/tokens", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and [t["role"] for t in r.json()] == ["admin"]
    finally:
        proc.terminate()
        proc.wait(15)
        os.close(master)
    # A second start finds the token and prints nothing; no file ever held it.
    again = gw.cli("init")
    assert "exists already" in again.stdout
    assert_no_secret_written(gw.written_files(), [token])


def test_admin_listener_on_ipv6(tmp_path: Path, upstream: MockUpstream, mock: MockUpstream) -> None:
    with Gateway(tmp_path, upstream.url, host="::1") as gw:
        pass
        token = json.loads(gw.cli("init", "--json").stdout)["token"]
        gw.secrets.append(token)
        headers = {"Authorization": f"Bearer {token}"}
        assert httpx.get(f"{gw.admin_url}/admin/keys", headers=headers).json() == []
        assert httpx.get(f"{gw.base}/admin/keys", headers=headers).status_code == 404
        made = httpx.post(f"{gw.admin_url}/admin/keys", json={"name": "v6"}, headers=headers).json()
        gw.secrets.append(made["key"])
        audit = httpx.get(f"{gw.admin_url}/admin/audit", headers=headers).json()
        assert [(e["action"], e["origin"]) for e in audit if e["target"] == made["id"]] == [
            ("keys.create", "::1")
        ]
    assert not mock.requests
    assert_no_secret_written(gw.written_files(), gw.secrets)


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
