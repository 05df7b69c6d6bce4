"""The admin listener (``keygate.admin.listener``): its own address (never the public one), its
settings, and the first admin token, shown once on the operator's terminal and nowhere else."""

from __future__ import annotations

import io
import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from keygate.admin.listener import announce_first_token
from keygate.config import ensure_pepper, load_settings
from keygate.errors import ConfigError
from keygate.ops import tokens
from keygate.ops.audit import Actor
from keygate.store import open_store
from keygate.testing import MockUpstream

from ..helpers import Gateway, assert_no_secret_written
from .common import Admin


class Terminal(io.StringIO):
    """What the operator sees: a text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(scope="module")
def admin(upstream: MockUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Admin]:
    with Gateway(tmp_path_factory.mktemp("listener"), upstream.url) as gw:
        yield Admin(gw)


def test_admin_listen_default_file_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings(None, {"OPENAI_API_KEY": "sk-x"})
    assert (s.admin_host, s.admin_port) == ("127.0.0.1", 8081)
    cfg = tmp_path / "k.yaml"
    cfg.write_text("admin_listen: '[::1]:9100'\n")
    assert (load_settings(cfg, {}).admin_host, load_settings(cfg, {}).admin_port) == ("::1", 9100)
    env = load_settings(cfg, {"KEYGATE_ADMIN_LISTEN": "10.0.0.5:9200"})
    assert (env.admin_host, env.admin_port) == ("10.0.0.5", 9200)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("admin_listen: nope\n", "admin_listen"),
        ("listen: 127.0.0.1:9000\nadmin_listen: 127.0.0.1:9000\n", "admin_listen"),
    ],
)
def test_bad_admin_listen_names_the_field(tmp_path: Path, text: str, field: str) -> None:
    cfg = tmp_path / "k.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_settings(cfg, {})
    assert exc.value.message.startswith(field)


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


def test_first_serve_shows_the_first_token_on_its_terminal_only(
    tmp_path: Path, upstream: MockUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a terminal on stderr, the first start prints an admin token there, and in no file."""
    gw = Gateway(tmp_path, upstream.url)
    screen = Terminal()
    monkeypatch.setattr("sys.stderr", screen)
    with gw:
        monkeypatch.undo()
        m = re.search(r"kga_[0-9A-Za-z]{38}", screen.getvalue())
        assert m is not None, "no admin token shown on the terminal"
        token = m.group()
        assert "cannot show it again" in screen.getvalue()
        r = httpx.get(f"{gw.admin_url}/admin/tokens", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and [t["role"] for t in r.json()] == ["admin"]
    # A second start finds the token and prints nothing; no file ever held it.
    again = Terminal()
    monkeypatch.setattr("sys.stderr", again)
    with gw:
        monkeypatch.undo()
    assert "kga_" not in again.getvalue()
    assert "exists already" in gw.cli("init").stdout
    assert_no_secret_written(gw.written_files(), [token])


def test_without_a_terminal_no_token_is_issued_and_the_log_says_what_to_do(
    tmp_path: Path, upstream: MockUpstream
) -> None:
    with Gateway(tmp_path, upstream.url) as gw:
        pass  # one start and a clean stop
    warned = [e for e in gw.log_entries() if e["event"].startswith("no admin token exists yet")]
    assert len(warned) == 1 and "keygate init" in warned[0]["event"]
    assert json.loads(gw.cli("admin-tokens", "list", "--json").stdout) == []
    assert "kga_" not in gw.stderr_path.read_text()


def test_announce_first_token_only_while_no_admin_token_is_active(tmp_path: Path) -> None:
    settings = ensure_pepper(load_settings(None, {"KEYGATE_DATABASE_URL": f"sqlite:///{tmp_path}/k.db"}))
    store = open_store(settings)
    try:
        screen = Terminal()
        announce_first_token(settings, store, screen)
        (first,) = store.list_admin_tokens()
        assert first.role == "admin" and first.name == "first admin" and first.id in screen.getvalue()
        secret = re.findall(r"kga_[0-9A-Za-z]{38}", screen.getvalue())
        assert len(secret) == 1 and tokens.authenticate(store, settings.pepper, secret[0]) == first
        (entry,) = store.list_audit()
        assert (entry.actor, entry.origin, entry.action) == ("serve", "local", "admin_tokens.create")
        quiet = Terminal()
        announce_first_token(settings, store, quiet)
        assert quiet.getvalue() == "" and len(store.list_admin_tokens()) == 1
        # Once the only admin token is revoked, the next start on a terminal issues a new one.
        store.revoke_admin_token(
            first.id, 1.0, Actor("test", "local").record("admin_tokens.revoke", first.id)
        )
        announce_first_token(settings, store, quiet)
        assert quiet.getvalue().count("kga_") == 1 and len(store.list_admin_tokens()) == 2
    finally:
        store.close()


def test_admin_listener_on_ipv6(tmp_path: Path, upstream: MockUpstream, mock: MockUpstream) -> None:
    with Gateway(tmp_path, upstream.url, host="::1") as gw:
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
