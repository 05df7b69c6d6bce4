"""Settings: one typed, validated, frozen object, built once and passed in.

This is the only module that reads the environment. Sources, later ones winning:

1. built-in defaults (upstream ``https://api.openai.com/v1`` keyed by ``${OPENAI_API_KEY}``,
   database ``./keygate.db``, listener ``127.0.0.1:8080``);
2. a YAML file: ``--config FILE`` or ``KEYGATE_CONFIG``;
3. ``KEYGATE_LISTEN``, ``KEYGATE_ADMIN_LISTEN`` and ``KEYGATE_DATABASE_URL``.

Secrets never appear literally in the file: an upstream key is a reference (``${ENV_VAR}``),
and a literal is refused at load with a message saying so. Any invalid value fails fast with a
:class:`~keygate.errors.ConfigError` naming the field.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from .access_config import KNOWN_SECTIONS, AccessSettings, parse_access
from .errors import ConfigError
from .limitconf import LimitSettings, parse_limits
from .types import Secret

DEFAULT_UPSTREAM_URL = "https://api.openai.com/v1"
DEFAULT_DATABASE_URL = "sqlite:///./keygate.db"
DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_ADMIN_LISTEN = "127.0.0.1:8081"
_ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")


@dataclass(frozen=True, slots=True)
class Upstream:
    """One upstream API: where it is, and the reference to (and value of) its key."""

    name: str
    base_url: str
    api_key_ref: str
    api_key: Secret | None
    allow_insecure: bool = False
    # Several keys (see upstream_pool.py): every reference, ${ENV} or file:/path, in order.
    api_key_refs: tuple[str, ...] = ()
    api_keys: tuple[Secret | None, ...] = ()  # resolved values of api_key_refs, in order
    fallback: str | None = None
    ca_bundle: Path | None = None
    strategy: str = "round_robin"  # round_robin | least_in_flight


@dataclass(frozen=True, slots=True)
class Settings:
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    admin_host: str = "127.0.0.1"
    admin_port: int = 8081
    database_url: str = DEFAULT_DATABASE_URL
    upstreams: Mapping[str, Upstream] = field(default_factory=dict)
    default_upstream: str = "openai"
    pepper: Secret = field(default_factory=lambda: Secret(""))
    max_body_bytes: int = 10 * 1024 * 1024
    body_read_timeout: float = 60.0
    connect_timeout: float = 10.0
    upstream_timeout: float = 600.0
    access_log: str = "-"
    usage_flush_interval: float = 0.5
    extra_request_headers: tuple[str, ...] = ()
    config_path: Path | None = None
    # Upstream secrets (vault.py, upstream_pool.py)
    master_key: Secret | None = None
    previous_master_key: Secret | None = None
    upstream_retries: int = 2
    rotation_warning_days: float = 7.0
    key_refresh_interval: float = 0.5
    limits: LimitSettings = field(default_factory=LimitSettings)  # rate limits, budgets (limitconf)
    access: AccessSettings = field(default_factory=AccessSettings)

    @property
    def database_path(self) -> Path:
        """The SQLite file the database URL names."""
        return sqlite_path(self.database_url)

    def upstream_for(self, name: str | None) -> Upstream:
        return self.upstreams[name or self.default_upstream]


def sqlite_path(url: str) -> Path:
    if not url.startswith("sqlite:///"):
        raise ConfigError(f"database_url: only sqlite:///PATH is supported, got {_scheme(url)!r}")
    return Path(url[len("sqlite:///") :])


def _scheme(url: str) -> str:
    return url.split(":", 1)[0] + ":..."


def parse_listen(value: object, field_name: str) -> tuple[str, int]:
    if not isinstance(value, str) or ":" not in value:
        raise ConfigError(f"{field_name}: expected HOST:PORT, got {value!r}")
    host, _, port_s = value.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_s)
    except ValueError:
        raise ConfigError(f"{field_name}: port must be a number, got {port_s!r}") from None
    if not 0 <= port <= 65535 or not host:
        raise ConfigError(f"{field_name}: expected HOST:PORT, got {value!r}")
    return host, port


def _resolve_secret_ref(ref: object, field_name: str, env: Mapping[str, str]) -> Secret | None:
    if not isinstance(ref, str):
        raise ConfigError(f"{field_name}: expected a reference such as ${{OPENAI_API_KEY}}")
    if ref.strip().startswith("file:"):
        return read_secret_file(ref.strip(), field_name)
    m = _ENV_REF.match(ref.strip())
    if m is None:
        raise ConfigError(
            f"{field_name}: literal secrets are not allowed in the config file; "
            "put the key in an environment variable and write a reference such as ${OPENAI_API_KEY}"
            " (or file:/path)"
        )
    value = env.get(m.group(1))
    return Secret(value) if value else None


def read_secret_file(ref: str, field_name: str) -> Secret | None:
    """The secret a ``file:/path`` reference names (Docker/Kubernetes secrets); None if absent."""
    path = Path(ref[len("file:") :])
    if not path.is_absolute():
        raise ConfigError(f"{field_name}: file: references need an absolute path")
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"{field_name}: cannot read {path}: {exc.strerror}") from None
    return Secret(value) if value else None


def read_master_key_file(path: Path, field_name: str) -> Secret:
    """A master key file: must exist and be readable by its owner only."""
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"{field_name}: {path} must not be readable by group or others (chmod 600)")
        value = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{field_name}: cannot read {path}: {exc.strerror}") from None
    if not value:
        raise ConfigError(f"{field_name}: {path} is empty")
    return Secret(value)


def check_base_url(url: object, field_name: str, allow_insecure: bool) -> str:
    if not isinstance(url, str):
        raise ConfigError(f"{field_name}: expected a URL string")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{field_name}: expected an http(s) URL, got {url!r}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigError(f"{field_name}: no credentials, query or fragment allowed in a base URL")
    loopback = parts.hostname in ("localhost", "127.0.0.1", "::1") or parts.hostname.startswith("127.")
    if parts.scheme == "http" and not loopback and not allow_insecure:
        raise ConfigError(f"{field_name}: https is required for non-loopback upstreams (or allow_insecure)")
    return url.rstrip("/")


def _parse_upstreams(raw: object, env: Mapping[str, str]) -> dict[str, Upstream]:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError("upstreams: expected a map from name to {base_url, api_key}")
    out: dict[str, Upstream] = {}
    for name, spec in raw.items():
        where = f"upstreams.{name}"
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: expected a map with base_url and api_key")
        unknown = set(spec) - {
            "base_url",
            "api_key",
            "allow_insecure",
            "api_keys",
            "fallback",
            "ca_bundle",
            "strategy",
        }
        if unknown:
            raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown setting")
        if "api_key" not in spec and "api_keys" not in spec:
            raise ConfigError(f"{where}.api_key: required (for example ${{OPENAI_API_KEY}})")
        insecure = bool(spec.get("allow_insecure", False))
        base = check_base_url(spec.get("base_url", DEFAULT_UPSTREAM_URL), f"{where}.base_url", insecure)
        refs = _key_refs(spec, where)
        keys = [_resolve_secret_ref(r, f"{where}.api_keys", env) for r in refs]
        out[str(name)] = Upstream(
            str(name),
            base,
            refs[0] if refs else "",
            keys[0] if keys else None,
            insecure,
            api_key_refs=tuple(refs),
            api_keys=tuple(keys),
            fallback=_optional_str(spec, "fallback", where),
            ca_bundle=_ca_bundle(spec, where),
            strategy=_strategy(spec, where),
        )
    for up in out.values():
        if up.fallback is not None and (up.fallback not in out or up.fallback == up.name):
            raise ConfigError(f"upstreams.{up.name}.fallback: {up.fallback!r} is not another upstream")
    return out


def _key_refs(spec: Mapping[str, Any], where: str) -> list[str]:
    refs: list[str] = []
    if "api_key" in spec:
        if not isinstance(spec["api_key"], str):
            raise ConfigError(f"{where}.api_key: expected a reference such as ${{OPENAI_API_KEY}}")
        refs.append(spec["api_key"].strip())
    extra = spec.get("api_keys", [])
    if not isinstance(extra, list) or not all(isinstance(r, str) for r in extra):
        raise ConfigError(f"{where}.api_keys: expected a list of references such as ${{OPENAI_API_KEY_2}}")
    refs.extend(r.strip() for r in extra)
    return refs


def _optional_str(spec: Mapping[str, Any], name: str, where: str) -> str | None:
    value = spec.get(name)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{where}.{name}: expected a string")
    return value


def _ca_bundle(spec: Mapping[str, Any], where: str) -> Path | None:
    value = _optional_str(spec, "ca_bundle", where)
    if value is None:
        return None
    path = Path(value)
    if not path.is_file():
        raise ConfigError(f"{where}.ca_bundle: {value} is not a readable PEM file")
    return path


def _strategy(spec: Mapping[str, Any], where: str) -> str:
    value = spec.get("strategy", "round_robin")
    if value not in ("round_robin", "least_in_flight"):
        raise ConfigError(f"{where}.strategy: expected round_robin or least_in_flight, got {value!r}")
    return str(value)


def _positive(raw: Mapping[str, Any], name: str, default: float, kind: type = float) -> Any:
    value = raw.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{name}: expected a positive number, got {value!r}")
    return kind(value)


_KNOWN = {
    "listen",
    "admin_listen",
    "database_url",
    "upstreams",
    "default_upstream",
    "max_body_bytes",
    "body_read_timeout",
    "connect_timeout",
    "upstream_timeout",
    "access_log",
    "usage_flush_interval",
    "extra_request_headers",
    "master_key_file",
    "previous_master_key_file",
    "upstream_retries",
    "rotation_warning_days",
    "key_refresh_interval",
    "limits",
    *KNOWN_SECTIONS,
}


def load_settings(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Build the settings from defaults, the YAML file and the environment."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    cfg_path = Path(path) if path else (Path(env["KEYGATE_CONFIG"]) if env.get("KEYGATE_CONFIG") else None)
    if cfg_path is not None:
        try:
            loaded = yaml.safe_load(cfg_path.read_text())
        except OSError as exc:
            raise ConfigError(f"config: cannot read {cfg_path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config: {cfg_path} is not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config: {cfg_path} must be a YAML mapping")
        raw = loaded
    unknown = set(raw) - _KNOWN
    if unknown:
        raise ConfigError(f"{sorted(unknown)[0]}: unknown setting")

    host, port = parse_listen(env.get("KEYGATE_LISTEN") or raw.get("listen", DEFAULT_LISTEN), "listen")
    admin_host, admin_port = parse_listen(
        env.get("KEYGATE_ADMIN_LISTEN") or raw.get("admin_listen", DEFAULT_ADMIN_LISTEN), "admin_listen"
    )
    if (admin_host, admin_port) == (host, port) and port != 0:
        raise ConfigError("admin_listen: must differ from listen (the public listener never serves admin)")
    db_url = env.get("KEYGATE_DATABASE_URL") or raw.get("database_url", DEFAULT_DATABASE_URL)
    if not isinstance(db_url, str):
        raise ConfigError("database_url: expected a string such as sqlite:///keygate.db")
    if cfg_path is not None and db_url.startswith("sqlite:///") and not db_url.startswith("sqlite:////"):
        # A relative database path in a config file is relative to that file, so the CLI and the
        # server find the same database wherever they are started from.
        db_url = "sqlite:///" + str((cfg_path.parent / db_url[len("sqlite:///") :]).resolve())
    sqlite_path(db_url)

    upstreams = _parse_upstreams(
        raw.get("upstreams", {"openai": {"base_url": DEFAULT_UPSTREAM_URL, "api_key": "${OPENAI_API_KEY}"}}),
        env,
    )
    default_upstream = raw.get("default_upstream", next(iter(upstreams)))
    if default_upstream not in upstreams:
        raise ConfigError(f"default_upstream: {default_upstream!r} is not one of the upstreams")

    extra_headers = raw.get("extra_request_headers", [])
    if not isinstance(extra_headers, list) or not all(isinstance(h, str) for h in extra_headers):
        raise ConfigError("extra_request_headers: expected a list of header names")
    access_log = raw.get("access_log", "-")
    if not isinstance(access_log, str):
        raise ConfigError("access_log: expected a file path or '-' for stdout")

    settings = Settings(
        listen_host=host,
        listen_port=port,
        admin_host=admin_host,
        admin_port=admin_port,
        database_url=db_url,
        upstreams=upstreams,
        default_upstream=str(default_upstream),
        max_body_bytes=_positive(raw, "max_body_bytes", 10 * 1024 * 1024, int),
        body_read_timeout=_positive(raw, "body_read_timeout", 60.0),
        connect_timeout=_positive(raw, "connect_timeout", 10.0),
        upstream_timeout=_positive(raw, "upstream_timeout", 600.0),
        access_log=access_log,
        usage_flush_interval=_positive(raw, "usage_flush_interval", 0.5),
        extra_request_headers=tuple(h.lower() for h in extra_headers),
        config_path=cfg_path,
        master_key=_master_key(raw, env, "master_key_file", "KEYGATE_MASTER_KEY", cfg_path),
        previous_master_key=_master_key(
            raw, env, "previous_master_key_file", "KEYGATE_PREVIOUS_MASTER_KEY", cfg_path
        ),
        upstream_retries=_retries(raw),
        rotation_warning_days=_positive(raw, "rotation_warning_days", 7.0),
        key_refresh_interval=_positive(raw, "key_refresh_interval", 0.5),
        limits=parse_limits(raw.get("limits")),
        access=parse_access(raw, env, cfg_path.parent if cfg_path is not None else None),
    )
    return _with_pepper(settings, env)


def _master_key(
    raw: Mapping[str, Any], env: Mapping[str, str], name: str, env_name: str, cfg_path: Path | None
) -> Secret | None:
    if env.get(env_name):
        return Secret(env[env_name])
    value = raw.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{name}: expected a file path")
    path = Path(value)
    if not path.is_absolute() and cfg_path is not None:
        path = cfg_path.parent / path
    return read_master_key_file(path, name)


def _retries(raw: Mapping[str, Any]) -> int:
    value = raw.get("upstream_retries", 2)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10:
        raise ConfigError(f"upstream_retries: expected a whole number from 0 to 10, got {value!r}")
    return value


def _with_pepper(settings: Settings, env: Mapping[str, str]) -> Settings:
    from dataclasses import replace

    if env.get("KEYGATE_PEPPER"):
        return replace(settings, pepper=Secret(env["KEYGATE_PEPPER"]))
    return replace(settings, pepper=load_or_create_pepper(settings.database_path.parent / "keygate.pepper"))


def load_or_create_pepper(path: Path) -> Secret:
    """Read the pepper file, creating it (mode 0600) with 256 random bits on first run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"pepper: {path} must not be readable by group or others (chmod 600)") from None
        value = path.read_text().strip()
        if len(value) < 32:
            raise ConfigError(f"pepper: {path} is too short; delete it only if no keys exist yet") from None
        return Secret(value)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_urlsafe(32) + "\n")
    return Secret(path.read_text().strip())


def admin_token_from_env(env: Mapping[str, str] | None = None) -> Secret | None:
    """The admin token the CLI sends to a remote admin API (``KEYGATE_ADMIN_TOKEN``)."""
    value = (os.environ if env is None else env).get("KEYGATE_ADMIN_TOKEN", "").strip()
    return Secret(value) if value else None
