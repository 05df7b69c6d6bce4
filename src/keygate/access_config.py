"""Access-control settings: the ``network``, ``auth``, ``tls`` and ``prompt_scan`` sections of the
config file.

Each setting is declared once, as a field with its default and check (``schema.setting``).
:mod:`keygate.config` builds the sections, giving :func:`parse_auth` the environment it read (this
module never reads the environment itself) and both parsers the config file's folder, which
relative paths are relative to.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import schema
from .errors import ConfigError
from .schema import positive, setting
from .types import Secret

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# Asymmetric algorithms only: a shared-secret (HS*) algorithm would let anyone holding the key
# that verifies tokens also mint them.
ALLOWED_JWT_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


@dataclass(frozen=True, slots=True)
class Lockout:
    enabled: bool = setting(True, schema.flag)
    max_failures: int = setting(20, positive(integer=True))
    window: float = setting(60.0, positive())
    duration: float = setting(300.0, positive())


def _forwarded_header(value: object, where: str) -> str:
    return str(schema.choice("x-forwarded-for", "forwarded")(str(value).lower(), where))


@dataclass(frozen=True, slots=True)
class NetworkSettings:
    allow: tuple[Network, ...] = setting((), schema.networks)
    deny: tuple[Network, ...] = setting((), schema.networks)
    trusted_proxies: tuple[Network, ...] = setting((), schema.networks)
    forwarded_header: str = setting("x-forwarded-for", _forwarded_header)
    lockout: Lockout = setting(Lockout, lambda v, w: schema.build(Lockout, v, w))


def _algorithms(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(a in ALLOWED_JWT_ALGORITHMS for a in value):
        raise ConfigError(f"{where}: expected a list from {sorted(ALLOWED_JWT_ALGORITHMS)}")
    return tuple(value)


@dataclass(frozen=True, slots=True)
class JWTSettings:
    issuer: str = setting("", schema.text)
    audience: str = setting("", schema.text)
    algorithms: tuple[str, ...] = setting(("RS256",), _algorithms)
    jwks_url: str | None = setting(None, schema.url)
    public_key_file: Path | None = setting(None, schema.caller)
    leeway: float = setting(30.0, positive(zero=True))
    subject_claim: str = setting("sub", schema.text)
    team_claim: str | None = setting(None, schema.optional_text)
    # The team (id or name) of a token whose team_claim is absent or empty; unset: such a token is
    # refused (guards/jwt_auth.py). A claim that names an unknown team is refused either way.
    default_team: str | None = setting(None, schema.optional_text)
    jwks_refresh_interval: float = setting(
        30.0, positive(zero=True)
    )  # one refetch on an unknown kid per interval
    jwks_cache_ttl: float = setting(300.0, positive())  # refetch known-good keys this often


@dataclass(frozen=True, slots=True)
class IntrospectionSettings:
    url: str = setting("", schema.url)
    client_id: Secret = setting(lambda: Secret(""), schema.caller)
    client_secret: Secret = setting(lambda: Secret(""), schema.caller)
    cache_ttl: float = setting(300.0, positive())
    inactive_cache_ttl: float = setting(10.0, positive(zero=True))
    team_claim: str | None = setting(None, schema.optional_text)
    subject_claim: str = setting("sub", schema.text)


@dataclass(frozen=True, slots=True)
class AuthSettings:
    keys: bool = setting(True, schema.flag)
    jwt: JWTSettings | None = setting(None, schema.caller)
    introspection: IntrospectionSettings | None = setting(None, schema.caller)


@dataclass(frozen=True, slots=True)
class TLSSettings:
    cert: Path | None = setting(None, schema.caller)
    key: Path | None = setting(None, schema.caller)
    client_ca: Path | None = setting(None, schema.caller)
    hsts_max_age: int = setting(31536000, positive(integer=True, zero=True))
    watch_interval: float = setting(5.0, positive())

    @property
    def enabled(self) -> bool:
        return self.cert is not None


SCAN_MODES = ("block", "mask", "log", "off")
"""What the prompt scan does with a finding, strictest first (see guards/prompt_scan.py)."""


@dataclass(frozen=True, slots=True)
class PromptScanSettings:
    """The gateway's default for request bodies holding secrets or personal data; a key's or
    team's ``prompt_scan`` policy replaces it (``keygate keys update --prompt-secrets ...``)."""

    secrets: str = setting("block", schema.choice(*SCAN_MODES))
    pii: str = setting("off", schema.choice(*SCAN_MODES))


@dataclass(frozen=True, slots=True)
class AccessSettings:
    network: NetworkSettings = field(default_factory=NetworkSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    tls: TLSSettings = field(default_factory=TLSSettings)


def existing_file(value: object, where: str, base: Path | None) -> Path:
    """A path to a readable file (relative to ``base``)."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a file path")
    path = schema.beside(Path(value), base)
    if not path.is_file():
        raise ConfigError(f"{where}: {path} is not a readable file")
    return path


def _required_secret(value: object, where: str, env: Mapping[str, str]) -> Secret:
    found = schema.secret_ref(value, where, env, files=False)
    if found is None:
        raise ConfigError(f"{where}: {str(value).strip()} is not set in the environment")
    return found


def _jwt(raw: object, base: Path | None) -> JWTSettings | None:
    if not raw:
        return None
    spec = schema.mapping(raw, "auth.jwt")
    where = "auth.jwt"
    if ("jwks_url" in spec) == ("public_key_file" in spec):
        raise ConfigError(f"{where}.jwks_url: give exactly one of jwks_url and public_key_file")
    key_file = None
    if "public_key_file" in spec:
        key_file = existing_file(spec["public_key_file"], f"{where}.public_key_file", base)
    found = schema.build(JWTSettings, spec, where, public_key_file=key_file)
    for name in ("issuer", "audience"):
        if not getattr(found, name):
            raise ConfigError(f"{where}.{name}: required")
    return found


def _introspection(raw: object, env: Mapping[str, str]) -> IntrospectionSettings | None:
    if not raw:
        return None
    where = "auth.introspection"
    spec = schema.mapping(raw, where)
    found = schema.build(
        IntrospectionSettings,
        spec,
        where,
        client_id=_required_secret(spec.get("client_id"), f"{where}.client_id", env),
        client_secret=_required_secret(spec.get("client_secret"), f"{where}.client_secret", env),
    )
    if not found.url:
        raise ConfigError(f"{where}.url: required")
    return found


def parse_auth(raw: object, env: Mapping[str, str], base: Path | None) -> AuthSettings:
    spec = schema.mapping(raw, "auth")
    auth = schema.build(
        AuthSettings,
        spec,
        "auth",
        jwt=_jwt(spec.get("jwt"), base),
        introspection=_introspection(spec.get("introspection"), env),
    )
    if not (auth.keys or auth.jwt or auth.introspection):
        raise ConfigError("auth: at least one of keys, jwt and introspection must be on")
    return auth


def parse_tls(raw: object, base: Path | None) -> TLSSettings:
    spec = schema.mapping(raw, "tls")
    if ("cert" in spec) != ("key" in spec):
        raise ConfigError("tls.cert: give both cert and key")
    if "client_ca" in spec and "cert" not in spec:
        raise ConfigError("tls.client_ca: needs tls.cert and tls.key")
    paths: dict[str, Any] = {
        name: existing_file(spec[name], f"tls.{name}", base) if name in spec else None
        for name in ("cert", "key", "client_ca")
    }
    return schema.build(TLSSettings, spec, "tls", **paths)
