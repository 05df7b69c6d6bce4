"""``keygate init`` and ``keygate admin-tokens`` (``keygate.cli.admin_tokens``): credentials for the
admin API, each secret printed once by the command that makes it."""

from __future__ import annotations

import json
from pathlib import Path

from keygate.testing import MockUpstream

from ..helpers import Gateway, assert_no_secret_written


def test_init_and_first_serve_print_the_first_token_once(tmp_path: Path, upstream: MockUpstream) -> None:
    gw = Gateway(tmp_path, upstream.url)
    first = gw.cli("init")
    assert first.stdout.count("kga_") == 1 and "cannot show it again" in first.stderr
    again = gw.cli("init")
    assert "kga_" not in again.stdout + again.stderr and "exists already" in again.stdout
    assert json.loads(gw.cli("admin-tokens", "list", "--json").stdout)[0]["role"] == "admin"


def test_init_json_and_tokens_lifecycle(tmp_path: Path, upstream: MockUpstream) -> None:
    gw = Gateway(tmp_path, upstream.url)
    first = json.loads(gw.cli("init", "--json").stdout)
    gw.secrets.append(first["token"])
    assert first["role"] == "admin" and first["name"] == "first admin" and first["token"].startswith("kga_")
    again = json.loads(gw.cli("init", "--json").stdout)
    assert again == {"database": str(tmp_path / "keygate.db"), "created": False}
    plain = gw.cli("admin-tokens", "create", "--role", "auditor", "--name", "grafana")
    (secret,) = [w for w in plain.stdout.split() if w.startswith("kga_")]
    gw.secrets.append(secret)
    assert "role auditor" in plain.stdout and "cannot show it again" in plain.stderr
    listed = json.loads(gw.cli("admin-tokens", "list", "--json").stdout)
    assert [(t["name"], t["role"], t["status"]) for t in listed] == [
        ("first admin", "admin", "active"),
        ("grafana", "auditor", "active"),
    ]
    assert listed[1]["hint"] == "kga_..." + secret[-4:] and "token_hash" not in listed[1]
    table = gw.cli("admin-tokens", "list").stdout
    assert table.splitlines()[0].split() == ["ID", "NAME", "HINT", "ROLE", "CREATED", "STATUS"]
    assert secret not in table and first["token"] not in table
    assert f"Revoked {listed[1]['id']}." in gw.cli("admin-tokens", "revoke", listed[1]["id"]).stdout
    assert "already revoked" in gw.cli("admin-tokens", "revoke", listed[1]["id"]).stdout
    missing = gw.cli("admin-tokens", "revoke", "adm_nope", check=False)
    assert missing.returncode == 1 and "no admin token with id 'adm_nope'" in missing.stderr
    bad_role = gw.cli("admin-tokens", "create", "--role", "root", check=False)
    assert bad_role.returncode == 2 and "invalid choice" in bad_role.stderr
    named_by_role = json.loads(gw.cli("admin-tokens", "create", "--role", "key-manager", "--json").stdout)
    gw.secrets.append(named_by_role["token"])
    assert named_by_role["name"] == "key-manager"
    # With the only admin token revoked, init issues a new one.
    gw.cli("admin-tokens", "revoke", first["id"])
    renewed = json.loads(gw.cli("init", "--json").stdout)
    gw.secrets.append(renewed["token"])
    assert renewed["role"] == "admin" and renewed["id"] != first["id"]
    assert_no_secret_written(gw.written_files(), gw.secrets)
