from __future__ import annotations

from pathlib import Path

import pytest

from keygate.config import ensure_pepper, load_settings
from keygate.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "keygate.yaml"
    p.write_text(text)
    return p


def test_zero_config_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings(None, {"OPENAI_API_KEY": "sk-x"})
    assert (s.listen_host, s.listen_port) == ("127.0.0.1", 8080)
    assert s.upstreams["openai"].base_url == "https://api.openai.com/v1"
    assert s.upstreams["openai"].api_key is not None and s.upstreams["openai"].api_key.reveal() == "sk-x"
    assert s.database_path == Path("keygate.db")
    # Loading reads only: the pepper file is made by the commands that need one.
    assert not (tmp_path / "keygate.pepper").exists() and not s.pepper
    made = ensure_pepper(s)
    assert (tmp_path / "keygate.pepper").stat().st_mode & 0o777 == 0o600 and made.pepper
    assert load_settings(None, {}).pepper == made.pepper == ensure_pepper(made).pepper


def test_file_and_env_overrides(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        "listen: 0.0.0.0:9000\ndatabase_url: sqlite:///data/kg.db\n"
        "upstreams:\n  azure:\n    base_url: https://example.openai.azure.com/openai/v1/\n    api_key: ${AZ_KEY}\n",
    )
    s = load_settings(cfg, {"AZ_KEY": "k", "KEYGATE_PEPPER": "p" * 40})
    assert s.listen_port == 9000 and s.default_upstream == "azure"
    assert s.database_path == tmp_path / "data" / "kg.db"  # relative to the config file
    assert s.upstreams["azure"].base_url == "https://example.openai.azure.com/openai/v1"
    s = load_settings(
        cfg,
        {
            "KEYGATE_LISTEN": "[::1]:7000",
            "KEYGATE_DATABASE_URL": f"sqlite:///{tmp_path}/x.db",
            "KEYGATE_PEPPER": "p" * 40,
        },
    )
    assert (s.listen_host, s.listen_port) == ("::1", 7000)
    assert s.database_path == tmp_path / "x.db"
    s = load_settings(None, {"KEYGATE_CONFIG": str(cfg), "KEYGATE_PEPPER": "p" * 40})
    assert s.config_path == cfg


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (
            "upstreams:\n  openai:\n    base_url: https://api.openai.com/v1\n    api_key: sk-literal\n",
            "upstreams.openai.api_key",
        ),
        ("listen: nowhere\n", "listen"),
        ("listen: 127.0.0.1:99999\n", "listen"),
        ("lsiten: 127.0.0.1:8080\n", "lsiten"),
        ("database_url: postgres://x\n", "database_url"),
        ("max_body_bytes: -1\n", "max_body_bytes"),
        ("upstreams:\n  x:\n    base_url: ftp://h\n    api_key: ${K}\n", "upstreams.x.base_url"),
        (
            "upstreams:\n  x:\n    base_url: http://api.example.com/v1\n    api_key: ${K}\n",
            "upstreams.x.base_url",
        ),
        (
            "upstreams:\n  x:\n    base_url: https://u:p@api.example.com/v1\n    api_key: ${K}\n",
            "upstreams.x.base_url",
        ),
        ("upstreams:\n  x:\n    base_url: https://h\n    api_key: sk-literal\n", "upstreams.x.api_keys"),
        ("default_upstream: 7\n", "default_upstream"),
        ("- a list\n", "config"),
        ("listen: [unclosed\n", "config"),
    ],
)
def test_invalid_config_names_the_field(tmp_path: Path, text: str, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), {"KEYGATE_PEPPER": "p" * 40})
    assert info.value.message.startswith(field)
    assert "sk-literal" not in info.value.message


def test_literal_secret_message_says_use_env(tmp_path: Path) -> None:
    cfg = write(tmp_path, "upstreams:\n  openai:\n    api_key: sk-abc\n")
    with pytest.raises(ConfigError, match="environment variable"):
        load_settings(cfg, {"KEYGATE_PEPPER": "p" * 40})


def test_pepper_file_must_be_private(tmp_path: Path) -> None:
    cfg = write(tmp_path, "database_url: sqlite:///kg.db\n")
    ensure_pepper(load_settings(cfg, {}))
    (tmp_path / "keygate.pepper").chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_settings(cfg, {})


def test_several_keys_file_refs_and_fallback(tmp_path: Path) -> None:
    secret = tmp_path / "k"
    secret.write_text("sk-from-file\n")
    cfg = write(
        tmp_path,
        "upstreams:\n"
        f"  a:\n    base_url: https://a.example/v1\n    api_keys: ['${{K1}}', 'file:{secret}']\n"
        "    fallback: b\n    strategy: least_in_flight\n"
        "  b:\n    base_url: https://b.example/v1\n    api_key: ${K1}\n",
    )
    s = load_settings(cfg, {"K1": "sk-env", "KEYGATE_PEPPER": "p" * 40})
    a = s.upstreams["a"]
    assert [k.reveal() if k else None for k in a.api_keys] == ["sk-env", "sk-from-file"]
    assert a.fallback == "b" and a.strategy == "least_in_flight"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("upstreams:\n  a:\n    api_key: ${K}\n    fallback: a\n", "upstreams.a.fallback"),
        ("upstreams:\n  a:\n    api_key: file:relative/path\n", "upstreams.a.api_keys"),
        ("upstreams:\n  a:\n    api_key: ${K}\n    strategy: random\n", "upstreams.a.strategy"),
        ("upstreams:\n  a:\n    api_key: ${K}\n    ca_bundle: /nonexistent.pem\n", "upstreams.a.ca_bundle"),
        ("upstream_retries: 99\n", "upstream_retries"),
        ("master_key_file: /nonexistent/master.key\n", "master_key_file"),
    ],
)
def test_invalid_upstream_secret_settings(tmp_path: Path, text: str, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), {"KEYGATE_PEPPER": "p" * 40})
    assert info.value.message.startswith(field)
