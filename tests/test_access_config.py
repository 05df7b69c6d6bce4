"""keygate.access_config: the network, auth and tls sections; invalid ones fail fast, naming the
field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from keygate.config import load_settings
from keygate.errors import ConfigError


def load(tmp_path: Path, extra: dict[str, object], env: dict[str, str] | None = None) -> object:
    cfg = tmp_path / "k.yaml"
    cfg.write_text(yaml.safe_dump({"database_url": "sqlite:///k.db", **extra}))
    return load_settings(cfg, {"KEYGATE_PEPPER": "p" * 40, **(env or {})})


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"network": {"allow": ["10.0.0.300/8"]}}, "network.allow"),
        ({"network": {"deny": "10.0.0.0/8"}}, "network.deny"),
        ({"network": {"forwarded_header": "x-real-ip"}}, "network.forwarded_header"),
        ({"network": {"lockout": {"max_failures": 0}}}, "network.lockout.max_failures"),
        ({"network": {"bogus": 1}}, "network.bogus"),
        ({"auth": {"keys": False}}, "auth"),
        ({"auth": {"jwt": {"audience": "a", "jwks_url": "https://i/j"}}}, "auth.jwt.issuer"),
        (
            {
                "auth": {
                    "jwt": {
                        "issuer": "i",
                        "audience": "a",
                        "jwks_url": "https://i/j",
                        "algorithms": ["HS256"],
                    }
                }
            },
            "auth.jwt.algorithms",
        ),
        ({"auth": {"jwt": {"issuer": "i", "audience": "a"}}}, "auth.jwt.jwks_url"),
        (
            {"auth": {"jwt": {"issuer": "i", "audience": "a", "jwks_url": "http://idp.example/j"}}},
            "auth.jwt.jwks_url",
        ),
        (
            {
                "auth": {
                    "introspection": {"url": "https://i/x", "client_id": "literal", "client_secret": "${S}"}
                }
            },
            "auth.introspection.client_id",
        ),
        (
            {
                "auth": {
                    "introspection": {"url": "https://i/x", "client_id": "${I}", "client_secret": "${UNSET}"}
                }
            },
            "auth.introspection.client_secret",
        ),
        ({"tls": {"cert": "missing.crt", "key": "missing.key"}}, "tls.cert"),
        ({"tls": {"cert": "missing.crt"}}, "tls.cert"),
    ],
)
def test_invalid_access_settings_name_the_field(tmp_path: Path, extra: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, extra, {"I": "id-value-1", "S": "s3cr3t-value-2"})
    assert exc.value.message.startswith(field)
    assert "s3cr3t-value-2" not in exc.value.message and "id-value-1" not in exc.value.message


def test_defaults(tmp_path: Path) -> None:
    settings = load(tmp_path, {})
    access = settings.access  # type: ignore[attr-defined]
    assert access.auth.keys and access.auth.jwt is None and not access.tls.enabled
    assert access.network.lockout.max_failures == 20 and access.network.lockout.window == 60


@pytest.mark.parametrize(
    ("extra", "path"),
    [
        ({"network": {"bogus": 1}}, "network.bogus"),
        ({"network": {"lockout": {"bogus": 1}}}, "network.lockout.bogus"),
        ({"auth": {"bogus": 1}}, "auth.bogus"),
        (
            {"auth": {"jwt": {"issuer": "i", "audience": "a", "jwks_url": "https://i/j", "bogus": 1}}},
            "auth.jwt.bogus",
        ),
        (
            {
                "auth": {
                    "introspection": {
                        "url": "https://i/x",
                        "client_id": "${I}",
                        "client_secret": "${S}",
                        "bogus": 1,
                    }
                }
            },
            "auth.introspection.bogus",
        ),
        ({"tls": {"bogus": 1}}, "tls.bogus"),
    ],
)
def test_unknown_settings_name_their_path(tmp_path: Path, extra: dict[str, object], path: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, extra, {"I": "id-value-1", "S": "s3cr3t-value-2"})
    assert exc.value.message == f"{path}: unknown setting"


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"network": "open"}, "network"),
        ({"auth": ["keys"]}, "auth"),
        ({"auth": {"keys": "yes"}}, "auth.keys"),
        (
            {
                "auth": {
                    "jwt": {
                        "issuer": "i",
                        "audience": "a",
                        "jwks_url": "https://i/j",
                        "public_key_file": "k.pem",
                    }
                }
            },
            "auth.jwt.jwks_url",
        ),
        (
            {"auth": {"jwt": {"issuer": "i", "audience": "a", "public_key_file": "missing.pem"}}},
            "auth.jwt.public_key_file",
        ),
        (
            {"auth": {"jwt": {"issuer": "i", "audience": "a", "jwks_url": "https://i/j", "leeway": -1}}},
            "auth.jwt.leeway",
        ),
        (
            {"auth": {"jwt": {"issuer": "i", "audience": "a", "jwks_url": "https://i/j", "algorithms": []}}},
            "auth.jwt.algorithms",
        ),
        (
            {"auth": {"introspection": {"client_id": "${I}", "client_secret": "${S}"}}},
            "auth.introspection.url",
        ),
        (
            {
                "auth": {
                    "introspection": {
                        "url": "https://i/x",
                        "client_id": "${I}",
                        "client_secret": "file:/etc/s",
                    }
                }
            },
            "auth.introspection.client_secret",
        ),
        ({"tls": {"key": "missing.key"}}, "tls.cert"),
        ({"tls": {"client_ca": "ca.pem"}}, "tls.client_ca"),
        ({"tls": {"cert": "", "key": "k"}}, "tls.cert"),
    ],
)
def test_more_invalid_access_settings(tmp_path: Path, extra: dict[str, object], field: str) -> None:
    (tmp_path / "k.pem").write_text("-----BEGIN PUBLIC KEY-----\n")
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, extra, {"I": "id-value-1", "S": "s3cr3t-value-2"})
    assert exc.value.message.startswith(field + ":")
    assert "s3cr3t-value-2" not in exc.value.message


def test_valid_access_settings(tmp_path: Path) -> None:
    for name in ("k.pem", "server.crt", "server.key", "ca.crt"):
        (tmp_path / name).write_text("placeholder: files are read when served")
    extra = {
        "network": {
            "allow": ["10.0.0.0/8", "192.168.1.7"],
            "trusted_proxies": ["127.0.0.1"],
            "forwarded_header": "Forwarded",
            "lockout": {"max_failures": 3, "window": 10, "duration": 60},
        },
        "auth": {
            "keys": False,
            "jwt": {
                "issuer": "https://idp",
                "audience": "kg",
                "public_key_file": "k.pem",
                "algorithms": ["ES256", "EdDSA"],
            },
            "introspection": {"url": "https://idp/introspect", "client_id": "${I}", "client_secret": "${S}"},
        },
        "tls": {"cert": "server.crt", "key": "server.key", "client_ca": "ca.crt", "hsts_max_age": 0},
    }
    access = load(tmp_path, extra, {"I": "id-value-1", "S": "s3cr3t-value-2"}).access  # type: ignore[attr-defined]
    net = access.network
    assert [str(n) for n in net.allow] == ["10.0.0.0/8", "192.168.1.7/32"]
    assert net.forwarded_header == "forwarded" and net.lockout.max_failures == 3
    jwt = access.auth.jwt
    assert jwt.public_key_file == tmp_path / "k.pem" and jwt.algorithms == ("ES256", "EdDSA")
    assert (jwt.leeway, jwt.subject_claim, jwt.team_claim, jwt.jwks_url) == (30.0, "sub", None, None)
    intro = access.auth.introspection
    assert intro.client_id.reveal() == "id-value-1" and intro.client_secret.reveal() == "s3cr3t-value-2"
    assert "s3cr3t-value-2" not in repr(intro)
    tls = access.tls
    assert tls.enabled and (tls.cert, tls.key, tls.client_ca) == (
        tmp_path / "server.crt",
        tmp_path / "server.key",
        tmp_path / "ca.crt",
    )
    assert tls.hsts_max_age == 0 and tls.watch_interval == 5.0
