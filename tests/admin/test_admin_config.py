"""Admin-plane settings: the admin listener and the CLI's admin token from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from keygate.config import admin_token_from_env, load_settings
from keygate.errors import ConfigError
from keygate.ops import tokens


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


def test_admin_token_from_env_is_a_secret() -> None:
    assert admin_token_from_env({}) is None and admin_token_from_env({"KEYGATE_ADMIN_TOKEN": " "}) is None
    token = admin_token_from_env({"KEYGATE_ADMIN_TOKEN": "kga_abc"})
    assert token is not None and token.reveal() == "kga_abc" and "kga_abc" not in repr(token) + str(token)


def test_role_permissions() -> None:
    assert all(tokens.allowed("admin", p) for perms in tokens.PERMISSIONS.values() for p in perms)
    assert tokens.allowed("key-manager", "keys:write") and not tokens.allowed("key-manager", "usage:read")
    assert not any(tokens.allowed("auditor", p) for p in tokens.PERMISSIONS["admin"] if p.endswith(":write"))
    assert not tokens.allowed("nobody", "keys:read")
