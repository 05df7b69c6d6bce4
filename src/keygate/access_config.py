"""Access-control settings: networks, authentication methods and TLS.

Parsed from the ``network``, ``auth`` and ``tls`` sections of the config file by
:func:`parse_access`, which :mod:`keygate.config` calls with the environment it read (this module
never reads the environment itself). Every invalid value fails fast with a
:class:`~keygate.errors.ConfigError` naming the field.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError
from .types import Secret

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")
# Asymmetric algorithms only: a shared-secret (HS*) algorithm would let anyone holding the key
# that verifies tokens also mint them.
ALLOWED_JWT_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


@dataclass(frozen=True, slots=True)
class Lockout:
    max_failures: int = 20
    window: float = 60.0
    duration: float = 300.0


@dataclass(frozen=True, slots=True)
class NetworkSettings:
    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()
    trusted_proxies: tuple[Network, ...] = ()
    forwarded_header: str = "x-forwarded-for"  # or "forwarded"
    lockout: Lockout = field(default_factory=Lockout)


@dataclass(frozen=True, slots=True)
class JWTSettings:
    issuer: str
    audience: str
    algorithms: tuple[str, ...]
    jwks_url: str | None = None
    public_key_file: Path | None = None
    leeway: float = 30.0
    subject_claim: str = "sub"
    team_claim: str | None = None
    jwks_refresh_interval: float = 30.0  # at most one refetch on an unknown kid per interval
    jwks_cache_ttl: float = 300.0  # refetch known-good keys this often (kept if the refetch fails)


@dataclass(frozen=True, slots=True)
class IntrospectionSettings:
    url: str
    client_id: Secret
    client_secret: Secret
    cache_ttl: float = 300.0
    inactive_cache_ttl: float = 10.0
    team_claim: str | None = None
    subject_claim: str = "sub"


@dataclass(frozen=True, slots=True)
class AuthSettings:
    keys: bool = True
    jwt: JWTSettings | None = None
    introspection: IntrospectionSettings | None = None


@dataclass(frozen=True, slots=True)
class TLSSettings:
    cert: Path | None = None
    key: Path | None = None
    client_ca: Path | None = None
    hsts_max_age: int = 31536000
    watch_interval: float = 5.0

    @property
    def enabled(self) -> bool:
        return self.cert is not None


@dataclass(frozen=True, slots=True)
class AccessSettings:
    network: NetworkSettings = field(default_factory=NetworkSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    tls: TLSSettings = field(default_factory=TLSSettings)


KNOWN_SECTIONS = frozenset({"network", "auth", "tls"})


def parse_access(raw: Mapping[str, Any], env: Mapping[str, str], base: Path | None) -> AccessSettings:
    """The access settings from the whole raw config mapping (relative paths are relative to ``base``)."""
    return AccessSettings(
        network=_network(_section(raw, "network")),
        auth=_auth(_section(raw, "auth"), env, base),
        tls=_tls(_section(raw, "tls"), base),
    )


def parse_networks(value: object, where: str) -> tuple[Network, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list of CIDR networks")
    out: list[Network] = []
    for item in value:
        try:
            out.append(ipaddress.ip_network(str(item), strict=False))
        except ValueError:
            raise ConfigError(f"{where}: {item!r} is not an IP address or CIDR network") from None
    return tuple(out)


def _section(raw: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = raw.get(name) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{name}: expected a mapping")
    return value


def _only(spec: Mapping[str, Any], where: str, known: set[str]) -> None:
    unknown = set(spec) - known
    if unknown:
        raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown setting")


def _number(spec: Mapping[str, Any], name: str, where: str, default: float, *, zero: bool = False) -> float:
    value = spec.get(name, default)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or value < 0
        or (value == 0 and not zero)
    ):
        raise ConfigError(f"{where}.{name}: expected a positive number, got {value!r}")
    return float(value)


def _network(spec: dict[str, Any]) -> NetworkSettings:
    _only(spec, "network", {"allow", "deny", "trusted_proxies", "forwarded_header", "lockout"})
    header = str(spec.get("forwarded_header", "x-forwarded-for")).lower()
    if header not in ("x-forwarded-for", "forwarded"):
        raise ConfigError("network.forwarded_header: expected x-forwarded-for or forwarded")
    lock = spec.get("lockout") or {}
    if not isinstance(lock, dict):
        raise ConfigError("network.lockout: expected a mapping")
    _only(lock, "network.lockout", {"max_failures", "window", "duration"})
    lockout = Lockout(
        max_failures=int(_number(lock, "max_failures", "network.lockout", 20)),
        window=_number(lock, "window", "network.lockout", 60.0),
        duration=_number(lock, "duration", "network.lockout", 300.0),
    )
    return NetworkSettings(
        allow=parse_networks(spec.get("allow"), "network.allow"),
        deny=parse_networks(spec.get("deny"), "network.deny"),
        trusted_proxies=parse_networks(spec.get("trusted_proxies"), "network.trusted_proxies"),
        forwarded_header=header,
        lockout=lockout,
    )


def _url(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a URL")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}: expected an http(s) URL, got {value!r}")
    loopback = parts.hostname in ("localhost", "::1") or parts.hostname.startswith("127.")
    if parts.scheme == "http" and not loopback:
        raise ConfigError(f"{where}: https is required for a non-loopback identity provider")
    return value


def _path(value: object, where: str, base: Path | None) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a file path")
    path = Path(value)
    if not path.is_absolute() and base is not None:
        path = base / path
    if not path.is_file():
        raise ConfigError(f"{where}: {path} is not a readable file")
    return path


def _secret(value: object, where: str, env: Mapping[str, str]) -> Secret:
    m = _ENV_REF.match(value.strip()) if isinstance(value, str) else None
    if m is None:
        raise ConfigError(f"{where}: write a reference to an environment variable such as ${{CLIENT_SECRET}}")
    if not env.get(m.group(1)):
        raise ConfigError(f"{where}: {m.group(0)} is not set in the environment")
    return Secret(env[m.group(1)])


def _jwt(spec: Any, base: Path | None) -> JWTSettings | None:
    if not spec:
        return None
    if not isinstance(spec, dict):
        raise ConfigError("auth.jwt: expected a mapping")
    where = "auth.jwt"
    _only(
        spec,
        where,
        {
            "issuer",
            "audience",
            "algorithms",
            "jwks_url",
            "public_key_file",
            "leeway",
            "subject_claim",
            "team_claim",
            "jwks_refresh_interval",
            "jwks_cache_ttl",
        },
    )
    for name in ("issuer", "audience"):
        if not isinstance(spec.get(name), str) or not spec[name]:
            raise ConfigError(f"{where}.{name}: required")
    algs = spec.get("algorithms", ["RS256"])
    if not isinstance(algs, list) or not algs or not all(a in ALLOWED_JWT_ALGORITHMS for a in algs):
        raise ConfigError(f"{where}.algorithms: expected a list from {sorted(ALLOWED_JWT_ALGORITHMS)}")
    if ("jwks_url" in spec) == ("public_key_file" in spec):
        raise ConfigError(f"{where}.jwks_url: give exactly one of jwks_url and public_key_file")
    team_claim = spec.get("team_claim")
    return JWTSettings(
        issuer=spec["issuer"],
        audience=spec["audience"],
        algorithms=tuple(algs),
        jwks_url=_url(spec["jwks_url"], f"{where}.jwks_url") if "jwks_url" in spec else None,
        public_key_file=(
            _path(spec["public_key_file"], f"{where}.public_key_file", base)
            if "public_key_file" in spec
            else None
        ),
        leeway=_number(spec, "leeway", where, 30.0, zero=True),
        subject_claim=str(spec.get("subject_claim", "sub")),
        team_claim=str(team_claim) if team_claim else None,
        jwks_refresh_interval=_number(spec, "jwks_refresh_interval", where, 30.0, zero=True),
        jwks_cache_ttl=_number(spec, "jwks_cache_ttl", where, 300.0),
    )


def _introspection(spec: Any, env: Mapping[str, str]) -> IntrospectionSettings | None:
    if not spec:
        return None
    if not isinstance(spec, dict):
        raise ConfigError("auth.introspection: expected a mapping")
    where = "auth.introspection"
    _only(
        spec,
        where,
        {
            "url",
            "client_id",
            "client_secret",
            "cache_ttl",
            "inactive_cache_ttl",
            "team_claim",
            "subject_claim",
        },
    )
    team_claim = spec.get("team_claim")
    return IntrospectionSettings(
        url=_url(spec.get("url"), f"{where}.url"),
        client_id=_secret(spec.get("client_id"), f"{where}.client_id", env),
        client_secret=_secret(spec.get("client_secret"), f"{where}.client_secret", env),
        cache_ttl=_number(spec, "cache_ttl", where, 300.0),
        inactive_cache_ttl=_number(spec, "inactive_cache_ttl", where, 10.0, zero=True),
        team_claim=str(team_claim) if team_claim else None,
        subject_claim=str(spec.get("subject_claim", "sub")),
    )


def _auth(spec: dict[str, Any], env: Mapping[str, str], base: Path | None) -> AuthSettings:
    _only(spec, "auth", {"keys", "jwt", "introspection"})
    keys = spec.get("keys", True)
    if not isinstance(keys, bool):
        raise ConfigError("auth.keys: expected true or false")
    auth = AuthSettings(
        keys=keys,
        jwt=_jwt(spec.get("jwt"), base),
        introspection=_introspection(spec.get("introspection"), env),
    )
    if not (auth.keys or auth.jwt or auth.introspection):
        raise ConfigError("auth: at least one of keys, jwt and introspection must be on")
    return auth


def _tls(spec: dict[str, Any], base: Path | None) -> TLSSettings:
    _only(spec, "tls", {"cert", "key", "client_ca", "hsts_max_age", "watch_interval"})
    if ("cert" in spec) != ("key" in spec):
        raise ConfigError("tls.cert: give both cert and key")
    if "client_ca" in spec and "cert" not in spec:
        raise ConfigError("tls.client_ca: needs tls.cert and tls.key")
    return TLSSettings(
        cert=_path(spec["cert"], "tls.cert", base) if "cert" in spec else None,
        key=_path(spec["key"], "tls.key", base) if "key" in spec else None,
        client_ca=_path(spec["client_ca"], "tls.client_ca", base) if "client_ca" in spec else None,
        hsts_max_age=int(_number(spec, "hsts_max_age", "tls", 31536000, zero=True)),
        watch_interval=_number(spec, "watch_interval", "tls", 5.0),
    )
