"""Access settings fail fast, naming the field."""

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
