"""keygate.config: defaults, the YAML file, environment overrides, the pepper; every error names its
field."""

from __future__ import annotations

from pathlib import Path

import pytest

from keygate.config import admin_token_from_env, ensure_pepper, load_settings
from keygate.errors import ConfigError

from .certs import CA


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


# --- the redesign: what loading accepts, and what it never does -----------------------------------

PEPPER = {"KEYGATE_PEPPER": "p" * 40}


def test_a_config_upstream_without_api_key_is_accepted(tmp_path: Path) -> None:
    s = load_settings(
        write(tmp_path, "upstreams:\n  openai:\n    base_url: https://api.openai.com/v1\n"), PEPPER
    )
    up = s.upstreams["openai"]
    assert (up.api_key_ref, up.api_key, up.api_key_refs, up.api_keys) == ("", None, (), ())
    assert up.source == "config" and s.default_upstream == "openai"


def test_an_unset_reference_loads_as_no_key(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, "upstreams:\n  openai:\n    api_key: ${NOT_SET}\n"), PEPPER)
    up = s.upstreams["openai"]
    assert (up.api_key_ref, up.api_key) == ("${NOT_SET}", None)
    assert up.base_url == "https://api.openai.com/v1"  # the default base URL


def test_default_upstream_naming_no_config_upstream_loads(tmp_path: Path) -> None:
    # Checked when serving (server.check_ready_to_serve): it may name a stored upstream.
    cfg = write(tmp_path, "default_upstream: azure\nupstreams:\n  openai:\n    api_key: ${K}\n")
    assert load_settings(cfg, PEPPER).default_upstream == "azure"


def test_the_builtin_upstream_is_marked_builtin(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, "listen: 127.0.0.1:9\n"), PEPPER)
    assert s.upstreams["openai"].source == "builtin" and s.upstreams["openai"].api_key is None


def test_load_settings_never_creates_the_pepper_file(tmp_path: Path) -> None:
    cfg = write(tmp_path, "database_url: sqlite:///data/kg.db\n")
    s = load_settings(cfg, {})
    assert not s.pepper and s.pepper_path == tmp_path / "data" / "keygate.pepper"
    assert not (tmp_path / "data").exists()  # not even its folder
    made = ensure_pepper(s)
    assert made.pepper and len(made.pepper.reveal()) >= 32
    assert s.pepper_path.stat().st_mode & 0o777 == 0o600
    assert load_settings(cfg, {}).pepper == made.pepper
    assert ensure_pepper(made) is made  # has one: nothing to do


def test_ensure_pepper_racing_another_process_reads_its_file(tmp_path: Path) -> None:
    cfg = write(tmp_path, "database_url: sqlite:///kg.db\n")
    first, second = load_settings(cfg, {}), load_settings(cfg, {})  # both before any file exists
    assert ensure_pepper(first).pepper == ensure_pepper(second).pepper


def test_keygate_pepper_wins_and_needs_no_file(tmp_path: Path) -> None:
    cfg = write(tmp_path, "database_url: sqlite:///kg.db\n")
    s = ensure_pepper(load_settings(cfg, {"KEYGATE_PEPPER": "q" * 40}))
    assert s.pepper.reveal() == "q" * 40 and not (tmp_path / "keygate.pepper").exists()


def test_a_pepper_file_that_cannot_be_used(tmp_path: Path) -> None:
    cfg = write(tmp_path, "database_url: sqlite:///kg.db\n")
    (tmp_path / "keygate.pepper").write_text("short\n")
    (tmp_path / "keygate.pepper").chmod(0o600)
    with pytest.raises(ConfigError, match=r"^pepper: .* is too short"):
        load_settings(cfg, {})
    (tmp_path / "not-a-dir").write_text("")
    cfg = write(tmp_path, "database_url: sqlite:///not-a-dir/kg.db\n")
    with pytest.raises(ConfigError, match=r"^pepper: cannot read"):
        load_settings(cfg, {})


def test_env_overrides_win_over_the_file(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        "listen: 127.0.0.1:9000\nadmin_listen: 127.0.0.1:9001\ndatabase_url: sqlite:///file.db\n",
    )
    env = {
        **PEPPER,
        "KEYGATE_LISTEN": "0.0.0.0:7000",
        "KEYGATE_ADMIN_LISTEN": "[::1]:7001",
        "KEYGATE_DATABASE_URL": f"sqlite:///{tmp_path}/env.db",
    }
    s = load_settings(cfg, env)
    assert (s.listen_host, s.listen_port, s.admin_host, s.admin_port) == ("0.0.0.0", 7000, "::1", 7001)  # noqa: S104
    assert s.database_path == tmp_path / "env.db"
    # Without a file, too; and an empty variable is no override.
    s = load_settings(None, {**env, "KEYGATE_LISTEN": ""})
    assert (s.listen_port, s.admin_port) == (8080, 7001)
    s = load_settings(cfg, PEPPER)
    assert (s.listen_port, s.admin_port, s.database_path) == (9000, 9001, tmp_path / "file.db")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("KEYGATE_LISTEN", "nowhere"),
        ("KEYGATE_ADMIN_LISTEN", "127.0.0.1:x"),
        ("KEYGATE_DATABASE_URL", "postgres://db"),
    ],
)
def test_a_bad_env_override_names_the_variable(tmp_path: Path, variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, "listen: 127.0.0.1:9000\n"), {**PEPPER, variable: value})
    assert info.value.message.startswith(variable + ":")


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("lsiten: 127.0.0.1:8080\n", "lsiten"),
        ("upstreams:\n  openai:\n    api_key: ${K}\n    bogus: 1\n", "upstreams.openai.bogus"),
        ("limits:\n  bogus: 1\n", "limits.bogus"),
        ("limits:\n  global:\n    bogus: 1\n", "limits.global.bogus"),
        ("network:\n  lockout:\n    bogus: 1\n", "network.lockout.bogus"),
        ("auth:\n  bogus: 1\n", "auth.bogus"),
        ("tls:\n  bogus: 1\n", "tls.bogus"),
    ],
)
def test_unknown_settings_name_their_path(tmp_path: Path, text: str, path: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), PEPPER)
    assert info.value.message == f"{path}: unknown setting"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("admin_listen: 127.0.0.1:8080\n", "admin_listen"),  # the same as listen (the default)
        ("listen: ':8080'\n", "listen"),
        ("listen: 8080\n", "listen"),
        ("database_url: 5\n", "database_url"),
        ("access_log: ''\n", "access_log"),
        ("extra_request_headers: x-team\n", "extra_request_headers"),
        ("extra_request_headers: ['']\n", "extra_request_headers"),
        ("upstream_retries: true\n", "upstream_retries"),
        ("upstream_retries: 1.5\n", "upstream_retries"),
        ("connect_timeout: 0\n", "connect_timeout"),
        ("usage_flush_interval: .nan\n", "usage_flush_interval"),
        ("upstreams: {}\n", "upstreams"),
        ("upstreams: [a]\n", "upstreams"),
        ("upstreams:\n  a:\n    api_keys: ${K}\n", "upstreams.a.api_keys"),
        ("upstreams:\n  a:\n    allow_insecure: 'yes'\n", "upstreams.a.allow_insecure"),
        ("master_key_file: 7\n", "master_key_file"),
    ],
)
def test_more_invalid_settings_name_the_field(tmp_path: Path, text: str, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), PEPPER)
    assert info.value.message.startswith(field + ":")


def test_typed_values_and_paths(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_bytes(CA("test-ca").pem())
    cfg = write(
        tmp_path,
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n"  # port 0 twice: both picked by the OS
        f"database_url: sqlite:///{tmp_path}/abs.db\n"
        "extra_request_headers: [X-Team, OpenAI-Beta]\nupstream_retries: 0\nconnect_timeout: 2\n"
        "upstreams:\n  local:\n    base_url: http://10.0.0.5:8000/v1\n    allow_insecure: true\n"
        "    api_key: ${K}\n    ca_bundle: ca.pem\n",
    )
    s = load_settings(cfg, PEPPER)
    assert s.database_path == tmp_path / "abs.db"  # absolute stays absolute
    assert s.extra_request_headers == ("x-team", "openai-beta")
    assert s.upstream_retries == 0 and isinstance(s.connect_timeout, float)
    up = s.upstreams["local"]
    assert up.allow_insecure and up.base_url == "http://10.0.0.5:8000/v1"
    assert up.ca_bundle == tmp_path / "ca.pem"


def test_empty_and_missing_config_files(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, ""), PEPPER)
    assert s.listen_port == 8080 and s.config_path == tmp_path / "keygate.yaml"
    with pytest.raises(ConfigError, match=r"^config: cannot read"):
        load_settings(tmp_path / "missing.yaml", PEPPER)


def test_master_key_files(tmp_path: Path) -> None:
    key = tmp_path / "master.key"
    key.write_text("m" * 44 + "\n")
    key.chmod(0o600)
    cfg = write(tmp_path, "master_key_file: master.key\n")  # relative to the config file
    s = load_settings(cfg, PEPPER)
    assert s.master_key is not None and s.master_key.reveal() == "m" * 44
    assert load_settings(cfg, {**PEPPER, "KEYGATE_MASTER_KEY": "from-env"}).master_key.reveal() == "from-env"  # type: ignore[union-attr]
    key.chmod(0o640)
    with pytest.raises(ConfigError, match=r"^master_key_file: .*chmod 600"):
        load_settings(cfg, PEPPER)
    key.chmod(0o600)
    key.write_text("\n")
    with pytest.raises(ConfigError, match=r"^master_key_file: .* is empty"):
        load_settings(cfg, PEPPER)


def test_admin_token_from_env() -> None:
    assert admin_token_from_env({}) is None
    assert admin_token_from_env({"KEYGATE_ADMIN_TOKEN": "  "}) is None
    token = admin_token_from_env({"KEYGATE_ADMIN_TOKEN": " kga_abc \n"})
    assert token is not None and token.reveal() == "kga_abc"


def test_a_ca_bundle_that_is_not_pem_is_refused_at_load(tmp_path: Path) -> None:
    """The message says "is not a readable PEM file": a file that is no PEM at all should fail
    here, naming the field, not on the first request to that upstream."""
    (tmp_path / "ca.pem").write_text("not a certificate")
    cfg = write(
        tmp_path,
        "upstreams:\n  a:\n    base_url: https://a.example/v1\n    api_key: ${K}\n    ca_bundle: ca.pem\n",
    )
    with pytest.raises(ConfigError) as info:
        load_settings(cfg, {"K": "sk-x", **PEPPER})
    assert info.value.message.startswith("upstreams.a.ca_bundle:")


# -- a networked database (PostgreSQL) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://keygate:hunter2@db:5432/keygate", "no literal password"),
        ("postgresql://keygate:@db/keygate", "no literal password"),
        ("postgresql://keygate@db/keygate?password=hunter2", "no password in the query string"),
        ("postgresql://keygate@db", "expected postgresql://USER@HOST:PORT/DATABASE"),
        ("postgresql://keygate@db:port/keygate", "the port is not a number"),
        ("mysql://keygate@db/keygate", "expected sqlite:///PATH or postgresql://"),
    ],
)
def test_a_database_url_never_holds_a_literal_password(tmp_path: Path, url: str, message: str) -> None:
    with pytest.raises(ConfigError, match="database_url") as raised:
        load_settings(write(tmp_path, f"database_url: {url}\n"), {})
    assert message in raised.value.message and "hunter2" not in raised.value.message
    with pytest.raises(ConfigError, match="KEYGATE_DATABASE_URL"):
        load_settings(None, {"KEYGATE_DATABASE_URL": url})


def test_a_password_by_reference_is_kept_apart_from_the_url(tmp_path: Path) -> None:
    cfg = write(tmp_path, "database_url: postgresql://keygate:${DB_PASSWORD}@db:5432/keygate\n")
    s = load_settings(cfg, {"DB_PASSWORD": "s3cret", "KEYGATE_PEPPER": "p" * 40})
    assert s.database_password is not None and s.database_password.reveal() == "s3cret"
    assert s.networked_database and s.database_label == "postgresql://keygate@db:5432/keygate"
    assert "s3cret" not in repr(s)
    with pytest.raises(ConfigError, match="DB_PASSWORD is not set"):
        load_settings(cfg, {})
    # libpq's own variables (PGPASSWORD, ~/.pgpass) need nothing in the URL.
    plain = load_settings(None, {"KEYGATE_DATABASE_URL": "postgresql://keygate@db/keygate"})
    assert plain.database_password is None and plain.database_label == "postgresql://keygate@db/keygate"


def test_a_networked_database_needs_the_shared_pepper_and_master_key(tmp_path: Path) -> None:
    cfg = write(tmp_path, "database_url: postgresql://keygate@db/keygate\n")
    with pytest.raises(ConfigError, match="pepper: with a networked database") as no_pepper:
        ensure_pepper(load_settings(cfg, {}))
    assert "KEYGATE_PEPPER" in no_pepper.value.message and "pepper_file" in no_pepper.value.message
    with pytest.raises(ConfigError, match="master_key: with a networked database") as no_key:
        ensure_pepper(load_settings(cfg, {"KEYGATE_PEPPER": "p" * 40}))
    assert "master_key_file" in no_key.value.message
    assert list(tmp_path.iterdir()) == [cfg]  # no pepper file was made
    env = {"KEYGATE_PEPPER": "p" * 40, "KEYGATE_MASTER_KEY": "k" * 44}
    assert ensure_pepper(load_settings(cfg, env)).pepper.reveal() == "p" * 40
    # A pepper file by reference works too (and must be private).
    pepper = tmp_path / "shared.pepper"
    pepper.write_text("q" * 40 + "\n")
    pepper.chmod(0o600)
    cfg.write_text(cfg.read_text() + "pepper_file: shared.pepper\n")
    s = ensure_pepper(load_settings(cfg, {"KEYGATE_MASTER_KEY": "k" * 44}))
    assert s.pepper.reveal() == "q" * 40
    pepper.chmod(0o644)
    with pytest.raises(ConfigError, match="must not be readable by group or others"):
        load_settings(cfg, {})
    pepper.unlink()
    with pytest.raises(ConfigError, match=r"pepper_file: .* does not exist"):
        load_settings(cfg, {})


def test_the_revision_poll_is_bounded(tmp_path: Path) -> None:
    assert load_settings(None, {}).database_poll_interval == 1.0
    with pytest.raises(ConfigError, match="database_poll_interval: expected a number > 0 and at most 5"):
        load_settings(write(tmp_path, "database_poll_interval: 6\n"), {})


# -- shared counters (Redis) -----------------------------------------------------------------------


def _redis_cfg(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> object:
    cfg = tmp_path / "keygate.yaml"
    cfg.write_text(text)
    return load_settings(cfg, env or {})


def test_redis_url_takes_its_password_only_by_reference(tmp_path: Path) -> None:
    s = _redis_cfg(tmp_path, "redis_url: redis://:${RPW}@cache:6380/2\n", {"RPW": "s3cret-pw"})
    assert s.redis_url == "redis://cache:6380/2" and s.redis_password is not None  # type: ignore[attr-defined]
    assert s.redis_password.reveal() == "s3cret-pw"  # type: ignore[attr-defined]
    assert "s3cret" not in repr(s)
    with pytest.raises(ConfigError, match="literal passwords are not allowed") as info:
        _redis_cfg(tmp_path, "redis_url: rediss://app:hunter2@cache:6380/0\n")
    assert "hunter2" not in str(info.value)
    with pytest.raises(ConfigError, match=r"redis_url: \$\{RPW\} is not set"):
        _redis_cfg(tmp_path, "redis_url: redis://:${RPW}@cache:6380/2\n")
    secret = tmp_path / "redis.pw"
    secret.write_text("from-a-file\n")
    s = _redis_cfg(tmp_path, f"redis_url: rediss://app@cache/0\nredis_password: file:{secret}\n")
    assert s.redis_url == "rediss://app@cache/0" and s.redis_password.reveal() == "from-a-file"  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="redis_password: literal secrets are not allowed"):
        _redis_cfg(tmp_path, "redis_url: redis://cache/0\nredis_password: hunter2\n")
    with pytest.raises(ConfigError, match="redis_url: expected redis://"):
        _redis_cfg(tmp_path, "redis_url: http://cache:6379\n")


def test_counter_failure_mode_and_lease_are_checked(tmp_path: Path) -> None:
    s = _redis_cfg(tmp_path, "redis_url: redis://cache/0\n")
    assert s.on_counter_failure == "closed" and s.counter_lease == 15.0  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="on_counter_failure"):
        _redis_cfg(tmp_path, "on_counter_failure: maybe\n")
    with pytest.raises(ConfigError, match="counter_lease"):
        _redis_cfg(tmp_path, "counter_lease: 60\n")  # a dead instance's slots must free within 30 s


def test_redis_ca_file_is_a_pem_bundle_and_only_for_rediss(tmp_path: Path) -> None:
    from .certs import CA

    ca = tmp_path / "ca.pem"
    ca.write_bytes(CA("redis-ca").pem())
    s = _redis_cfg(tmp_path, "redis_url: rediss://cache:6380/0\nredis_ca_file: ca.pem\n")
    assert s.redis_ca_file == ca  # type: ignore[attr-defined]  (beside the config file)
    with pytest.raises(ConfigError, match="redis_ca_file: set only with a rediss:// redis_url"):
        _redis_cfg(tmp_path, "redis_url: redis://cache:6379/0\nredis_ca_file: ca.pem\n")
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match=r"redis_ca_file: .* is not a readable PEM file"):
        _redis_cfg(tmp_path, "redis_url: rediss://cache:6380/0\nredis_ca_file: junk.pem\n")
