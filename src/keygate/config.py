"""Settings: one typed, validated, frozen object, built once and passed in.

This is the only module that reads the environment. Sources, later ones winning:

1. built-in defaults (upstream ``https://api.openai.com/v1`` keyed by ``${OPENAI_API_KEY}``,
   database ``./keygate.db``, listener ``127.0.0.1:8080``);
2. a YAML file: ``--config FILE`` or ``KEYGATE_CONFIG``;
3. ``KEYGATE_LISTEN``, ``KEYGATE_ADMIN_LISTEN`` and ``KEYGATE_DATABASE_URL``;
4. the standard ``OTEL_*`` variables, for tracing (read by ``observe_config.parse_tracing``).

The database is SQLite (``sqlite:///PATH``) or PostgreSQL (``postgresql://USER@HOST:PORT/DB``,
see :func:`postgres_url`): never with a literal password, which would sit in the file and in
every process listing; a ``${VAR}`` reference or libpq's own variables (``PGPASSWORD``,
``PGPASSFILE``) instead. With a networked database every instance and the CLI must share the
pepper and the master key, so :func:`ensure_pepper` refuses to make a local pepper file there.

Each setting is declared once, below, as a field of its section with its default and its check
(``schema.setting``); :func:`load_settings` reads the file through them and fails fast with a
:class:`~keygate.errors.ConfigError` naming the field. Secrets never appear literally in the file:
an upstream key is a reference (``${ENV_VAR}`` or ``file:/path``), and a literal is refused.

Loading reads; it creates nothing. The pepper file is made by :func:`ensure_pepper`, which the
commands that need a pepper call (``serve`` and the local CLI).
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from . import schema
from .access_config import (
    AccessSettings,
    AuthSettings,
    NetworkSettings,
    PromptScanSettings,
    TLSSettings,
    parse_auth,
    parse_tls,
)
from .anomalyconf import AnomalySettings
from .audit_config import AlertSink, AuditSettings, parse_alerts
from .dburls import (
    database_password,
    is_networked,
    parse_database_url,
    parse_redis_url,
    redis_connection,
    sqlite_path,
    without_password,
)
from .errors import ConfigError
from .limitconf import LimitSettings, parse_limits
from .observe_config import MetricsSettings, TracingSettings, parse_tracing
from .schema import caller, positive, setting
from .types import Secret

DEFAULT_UPSTREAM_URL = "https://api.openai.com/v1"
DEFAULT_DATABASE_URL = "sqlite:///./keygate.db"
PEPPER_FILE = "keygate.pepper"


class Address(NamedTuple):
    host: str
    port: int


def parse_listen(value: object, where: str) -> Address:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6)."""
    if not isinstance(value, str) or ":" not in value:
        raise ConfigError(f"{where}: expected HOST:PORT, got {value!r}")
    host, _, port_text = value.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"{where}: port must be a number, got {port_text!r}") from None
    if not 0 <= port <= 65535 or not host:
        raise ConfigError(f"{where}: expected HOST:PORT, got {value!r}")
    return Address(host, port)


def _header_names(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(h, str) and h for h in value):
        raise ConfigError(f"{where}: expected a list of header names")
    return tuple(h.lower() for h in value)


def _retries(value: object, where: str) -> int:
    found: int = schema.number(value, where, integer=True, zero=True, maximum=10)
    return found


def _access_log(value: object, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a file path or '-' for stdout")
    return value


# -- upstreams -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Upstream:
    """One upstream API: where it is, and the references to (and values of) its keys.

    ``source`` is ``config`` for an upstream of the config file, ``builtin`` for the default one a
    config without ``upstreams`` gets (a stored upstream of the same name replaces it), ``store``
    for one defined with ``keygate upstreams add``.
    """

    name: str
    base_url: str
    api_key_ref: str  # the first reference, "" when the upstream has none (keys from the store)
    api_key: Secret | None
    allow_insecure: bool = False
    api_key_refs: tuple[str, ...] = ()  # every reference, ${ENV} or file:/path, in order
    api_keys: tuple[Secret | None, ...] = ()  # their values, in order (None: unset or missing)
    fallback: str | None = None
    ca_bundle: Path | None = None
    strategy: str = "round_robin"  # round_robin | least_in_flight
    source: str = "config"


@dataclass(frozen=True, slots=True)
class _UpstreamSpec:
    """One entry of ``upstreams:`` as written (checked one by one; combined by ``_upstreams``)."""

    base_url: str = setting(DEFAULT_UPSTREAM_URL, schema.text)
    api_key: str | None = setting(None, lambda v, w: _refs([v], w)[0])
    api_keys: tuple[str, ...] = setting((), lambda v, w: _refs(v, w))
    allow_insecure: bool = setting(False, schema.flag)
    fallback: str | None = setting(None, schema.optional_text)
    ca_bundle: str | None = setting(None, schema.optional_text)
    strategy: str = setting("round_robin", schema.choice("round_robin", "least_in_flight"))


def _refs(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(r, str) for r in value):
        raise ConfigError(f"{where}: expected references such as ${{OPENAI_API_KEY}} or file:/path")
    return tuple(r.strip() for r in value)


def _upstream(
    name: str, spec: _UpstreamSpec, env: Mapping[str, str], base: Path | None, source: str
) -> Upstream:
    where = f"upstreams.{name}"
    refs = ((spec.api_key.strip(),) if spec.api_key is not None else ()) + spec.api_keys
    keys = tuple(schema.secret_ref(r, f"{where}.api_keys", env) for r in refs)
    ca_bundle = None
    if spec.ca_bundle is not None:
        ca_bundle = schema.beside(Path(spec.ca_bundle), base)
        schema.pem_bundle(ca_bundle, f"{where}.ca_bundle")
    return Upstream(
        name,
        schema.url(spec.base_url, f"{where}.base_url", insecure_ok=spec.allow_insecure),
        refs[0] if refs else "",
        keys[0] if keys else None,
        spec.allow_insecure,
        api_key_refs=refs,
        api_keys=keys,
        fallback=spec.fallback,
        ca_bundle=ca_bundle,
        strategy=spec.strategy,
        source=source,
    )


def _upstreams(raw: object, env: Mapping[str, str], base: Path | None) -> dict[str, Upstream]:
    if raw is None:
        spec = _UpstreamSpec(api_key="${OPENAI_API_KEY}")
        return {"openai": _upstream("openai", spec, env, base, "builtin")}
    if not isinstance(raw, dict) or not raw:
        raise ConfigError("upstreams: expected a map from name to {base_url, api_key}")
    out = {
        str(name): _upstream(
            str(name), schema.build(_UpstreamSpec, spec, f"upstreams.{name}"), env, base, "config"
        )
        for name, spec in raw.items()
    }
    for up in out.values():
        if up.fallback is not None and up.fallback == up.name:
            raise ConfigError(f"upstreams.{up.name}.fallback: an upstream cannot fall back to itself")
    return out


# -- the settings ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settings:
    listen: Address = setting(
        Address("127.0.0.1", 8080), parse_listen, env="KEYGATE_LISTEN", doc="the public listener"
    )
    admin_listen: Address = setting(
        Address("127.0.0.1", 8081), parse_listen, env="KEYGATE_ADMIN_LISTEN", doc="the admin API"
    )
    database_url: str = setting(DEFAULT_DATABASE_URL, parse_database_url, env="KEYGATE_DATABASE_URL")
    database_poll_interval: float = setting(
        1.0, positive(maximum=5.0), doc="PostgreSQL: the revision poll behind LISTEN/NOTIFY (seconds)"
    )
    pepper_file: str | None = setting(None, schema.optional_text, doc="the shared pepper (chmod 600)")
    write_buffer_rows: int = setting(
        100_000,
        positive(integer=True, maximum=10_000_000),
        doc="usage rows (and audit rows) kept while the database is unreachable, per buffer",
    )
    upstreams: Mapping[str, Upstream] = setting(dict, caller)
    default_upstream: str = setting("", schema.text, doc="the first upstream when not given")
    max_body_bytes: int = setting(10 * 1024 * 1024, positive(integer=True))
    body_read_timeout: float = setting(60.0, positive())
    connect_timeout: float = setting(10.0, positive())
    upstream_timeout: float = setting(600.0, positive())
    access_log: str = setting("-", _access_log)
    usage_flush_interval: float = setting(0.5, positive())
    # Counters shared by every instance (docs/redis.md); None: in process.
    redis_url: str | None = setting(None, parse_redis_url, env="KEYGATE_REDIS_URL")
    redis_password: Secret | None = setting(None, caller)
    redis_ca_file: Path | None = setting(None, caller, doc="CAs (PEM) a rediss:// server is checked against")
    on_counter_failure: str = setting("closed", schema.choice("closed", "open"))
    counter_lease: float = setting(
        15.0, positive(maximum=30.0), doc="seconds a slot or hold outlives its instance"
    )
    extra_request_headers: tuple[str, ...] = setting((), _header_names)
    master_key: Secret | None = setting(None, caller, key="master_key_file")
    previous_master_key: Secret | None = setting(None, caller, key="previous_master_key_file")
    upstream_retries: int = setting(2, _retries)
    rotation_warning_days: float = setting(7.0, positive())
    key_refresh_interval: float = setting(0.5, positive())
    limits: LimitSettings = setting(LimitSettings, lambda v, w: parse_limits(v))
    network: NetworkSettings = setting(NetworkSettings, lambda v, w: schema.build(NetworkSettings, v, w))
    auth: AuthSettings = setting(AuthSettings, caller)
    tls: TLSSettings = setting(TLSSettings, caller)
    prompt_scan: PromptScanSettings = setting(
        PromptScanSettings, lambda v, w: schema.build(PromptScanSettings, v, w)
    )
    audit: AuditSettings = setting(AuditSettings, lambda v, w: schema.build(AuditSettings, v, w))
    alerts: tuple[AlertSink, ...] = setting((), caller)
    metrics: MetricsSettings = setting(MetricsSettings, lambda v, w: schema.build(MetricsSettings, v, w))
    tracing: TracingSettings = setting(TracingSettings, caller)  # tracing: and the OTEL_* variables
    anomalies: AnomalySettings = setting(AnomalySettings, lambda v, w: schema.build(AnomalySettings, v, w))
    # Not settings of the file:
    pepper: Secret = field(default_factory=lambda: Secret(""))
    database_password: Secret | None = None
    config_path: Path | None = None

    @property
    def listen_host(self) -> str:
        return self.listen.host

    @property
    def listen_port(self) -> int:
        return self.listen.port

    @property
    def admin_host(self) -> str:
        return self.admin_listen.host

    @property
    def admin_port(self) -> int:
        return self.admin_listen.port

    @property
    def access(self) -> AccessSettings:
        return AccessSettings(self.network, self.auth, self.tls)

    @property
    def networked_database(self) -> bool:
        return is_networked(self.database_url)

    @property
    def database_label(self) -> str:
        """The database, as it may be shown: the SQLite file, or the URL without a password."""
        return without_password(self.database_url) if self.networked_database else str(self.database_path)

    @property
    def database_path(self) -> Path:
        """The SQLite file the database URL names."""
        return sqlite_path(self.database_url)

    @property
    def pepper_path(self) -> Path:
        """The pepper file: ``pepper_file``, else (SQLite) the one next to the database."""
        if self.pepper_file is not None:
            return schema.beside(
                Path(self.pepper_file), self.config_path.parent if self.config_path else None
            )
        return self.database_path.parent / PEPPER_FILE


def process_env() -> Mapping[str, str]:
    """This process's environment: the one place keygate reads it (other modules are given it)."""
    return os.environ


def _redis_ca_file(value: object, base: Path | None) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError("redis_ca_file: expected the path of a PEM file of CA certificates")
    return schema.pem_bundle(schema.beside(Path(value), base), "redis_ca_file")


def load_settings(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Build the settings from defaults, the YAML file and the environment."""
    env = process_env() if env is None else env
    cfg_path = Path(path) if path else (Path(env["KEYGATE_CONFIG"]) if env.get("KEYGATE_CONFIG") else None)
    raw = _read_yaml(cfg_path) if cfg_path is not None else {}
    base = cfg_path.parent if cfg_path is not None else None
    upstreams = _upstreams(raw.get("upstreams"), env, base)
    given: dict[str, Any] = {
        "upstreams": upstreams,
        "master_key": _master_key(raw, env, "master_key_file", "KEYGATE_MASTER_KEY", base),
        "previous_master_key": _master_key(
            raw, env, "previous_master_key_file", "KEYGATE_PREVIOUS_MASTER_KEY", base
        ),
        "auth": parse_auth(raw.get("auth"), env, base),
        "tls": parse_tls(raw.get("tls"), base),
        "alerts": parse_alerts(raw.get("alerts"), env),
        "tracing": parse_tracing(raw.get("tracing"), env),
        "config_path": cfg_path,
        "redis_password": None,
        "redis_ca_file": _redis_ca_file(raw.get("redis_ca_file"), base),
    }
    settings = schema.build(Settings, raw, "", env, **given)
    if settings.redis_url is not None:
        url, password = redis_connection(settings.redis_url, raw.get("redis_password"), env)
        settings = dataclasses.replace(settings, redis_url=url, redis_password=password)
    elif raw.get("redis_password") is not None:
        raise ConfigError("redis_password: set only with redis_url")
    if settings.redis_ca_file is not None and not (settings.redis_url or "").startswith("rediss://"):
        raise ConfigError("redis_ca_file: set only with a rediss:// redis_url (TLS)")
    if settings.admin_listen == settings.listen and settings.listen.port != 0:
        raise ConfigError("admin_listen: must differ from listen (the public listener never serves admin)")
    changes: dict[str, Any] = {}
    if not settings.default_upstream:
        changes["default_upstream"] = next(iter(upstreams))
    url = settings.database_url
    if cfg_path is not None and url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        # A relative database path in a config file is relative to that file, so the CLI and the
        # server find the same database wherever they are started from.
        changes["database_url"] = "sqlite:///" + str((cfg_path.parent / url[len("sqlite:///") :]).resolve())
    settings = dataclasses.replace(settings, **changes) if changes else settings
    return dataclasses.replace(
        settings,
        pepper=_read_pepper(settings, env),
        database_password=database_password(settings.database_url, env),
    )


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"config: cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config: {path} is not valid YAML: {exc}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config: {path} must be a YAML mapping")
    return loaded


def _master_key(
    raw: Mapping[str, Any], env: Mapping[str, str], name: str, env_name: str, base: Path | None
) -> Secret | None:
    if env.get(env_name):
        return Secret(env[env_name])
    value = raw.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{name}: expected a file path")
    return read_master_key_file(schema.beside(Path(value), base), name)


def read_master_key_file(path: Path, where: str) -> Secret:
    """A master key file: must exist and be readable by its owner only."""
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"{where}: {path} must not be readable by group or others (chmod 600)")
        value = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror}") from None
    if not value:
        raise ConfigError(f"{where}: {path} is empty")
    return Secret(value)


# -- the pepper ------------------------------------------------------------------------------------


def _read_pepper(settings: Settings, env: Mapping[str, str]) -> Secret:
    """``KEYGATE_PEPPER``, else the pepper file next to the database if it exists (else empty)."""
    if env.get("KEYGATE_PEPPER"):
        return Secret(env["KEYGATE_PEPPER"])
    if settings.networked_database and settings.pepper_file is None:
        return Secret("")
    path = settings.pepper_path
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if settings.pepper_file is not None:
            raise ConfigError(f"pepper_file: {path} does not exist") from None
        return Secret("")
    except OSError as exc:
        raise ConfigError(f"pepper: cannot read {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"pepper: {path} must not be readable by group or others (chmod 600)")
    value = path.read_text().strip()
    if len(value) < 32:
        raise ConfigError(f"pepper: {path} is too short; delete it only if no keys exist yet")
    return Secret(value)


def ensure_pepper(settings: Settings) -> Settings:
    """The settings with a pepper: on first run, create the pepper file (mode 0600, 256 random bits).

    With a networked database nothing is created: the pepper and the master key must be the ones
    every other instance has, so their absence is a :class:`ConfigError` saying so.
    """
    if settings.networked_database:
        check_shared_secrets(settings)
        return settings
    if settings.pepper:
        return settings
    path = settings.pepper_path
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it a moment ago
        return dataclasses.replace(settings, pepper=_read_pepper(settings, {}))
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_urlsafe(32) + "\n")
    return dataclasses.replace(settings, pepper=_read_pepper(settings, {}))


def check_shared_secrets(settings: Settings) -> None:
    """With a networked database, refuse to go on without the shared pepper and master key."""
    why = (
        "with a networked database (postgresql://) every gateway instance and the CLI must use the "
        "same {what}; keygate does not generate one locally, because the other instances would not "
        "have it"
    )
    if not settings.pepper:
        raise ConfigError(
            "pepper: "
            + why.format(what="pepper")
            + ". Set KEYGATE_PEPPER (32+ random characters, e.g. `openssl rand -base64 32`) or "
            "pepper_file (chmod 600) on every instance"
        )
    if settings.master_key is None:
        raise ConfigError(
            "master_key: "
            + why.format(what="master key")
            + ". Run `keygate master-key generate --out FILE` once and give every instance "
            "master_key_file (or KEYGATE_MASTER_KEY)"
        )


def admin_token_from_env(env: Mapping[str, str] | None = None) -> Secret | None:
    """The admin token the CLI sends to a remote admin API (``KEYGATE_ADMIN_TOKEN``)."""
    value = (process_env() if env is None else env).get("KEYGATE_ADMIN_TOKEN", "").strip()
    return Secret(value) if value else None
