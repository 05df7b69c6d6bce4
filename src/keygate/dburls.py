"""The database and Redis URLs: what they may hold, and how a password in them is referred to.

Neither URL may carry a literal password (it would sit in the config file and in process
listings): a ``USER:${VAR}@`` reference, or libpq's and Redis's own ways, instead. These checks are
used by the settings (:mod:`keygate.config`) and by ``keygate migrate``'s ``--from`` and ``--to``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from . import schema
from .errors import ConfigError
from .types import Secret


def sqlite_path(url: str, where: str = "database_url") -> Path:
    if not url.startswith("sqlite:///"):
        raise ConfigError(f"{where}: only sqlite:///PATH is supported, got {url.split(':', 1)[0]!r}")
    return Path(url[len("sqlite:///") :])


POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_networked(url: str) -> bool:
    """Whether the database URL names a database server (shared by several gateways)."""
    return url.startswith(POSTGRES_SCHEMES)


def postgres_url(value: str, where: str) -> str:
    """``postgresql://USER@HOST:PORT/DB``: a host and a database, and no literal password, in the
    URL or its query (``?password=``); ``USER:${VAR}@`` names the variable holding it."""
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 - parses the port, raising on a bad one
    except ValueError:
        raise ConfigError(f"{where}: the port is not a number") from None
    if not parts.hostname or not parts.path.strip("/"):
        raise ConfigError(f"{where}: expected postgresql://USER@HOST:PORT/DATABASE")
    if parts.password is not None and not schema.ENV_REF.match(parts.password):
        raise ConfigError(
            f"{where}: no literal password in the database URL (it would show in the config file and "
            "in process listings); write USER:${VAR}@HOST with the password in that environment "
            "variable, or set PGPASSWORD / use a ~/.pgpass file"
        )
    if any(k.lower() == "password" for k, _ in parse_qsl(parts.query)):
        raise ConfigError(f"{where}: no password in the query string; use PGPASSWORD or USER:${{VAR}}@HOST")
    if parts.fragment:
        raise ConfigError(f"{where}: no fragment allowed in the database URL")
    return value


def parse_database_url(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string such as sqlite:///keygate.db")
    if is_networked(value):
        return postgres_url(value, where)
    try:
        sqlite_path(value, where)
    except ConfigError:
        raise ConfigError(
            f"{where}: expected sqlite:///PATH or postgresql://USER@HOST:PORT/DB, "
            f"got {value.split(':', 1)[0]!r}"
        ) from None
    return value


def database_password(url: str, env: Mapping[str, str], where: str = "database_url") -> Secret | None:
    """The password a ``USER:${VAR}@`` database URL refers to (None without one)."""
    password = urlsplit(url).password if is_networked(url) else None
    if password is None:
        return None
    m = schema.ENV_REF.match(password)
    assert m is not None  # postgres_url refused anything else
    found = env.get(m.group(1))
    if not found:
        raise ConfigError(f"{where}: the password variable {m.group(1)} is not set")
    return Secret(found)


def without_password(url: str) -> str:
    """The database URL with any password reference removed: what libpq is given (the password
    itself goes separately) and what may be logged."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return parts._replace(netloc=f"{user}@{host}" if user else host).geturl()


def parse_redis_url(value: object, where: str) -> str:
    """``redis://[user@]host:port/db`` or ``rediss://`` (TLS); a password only as a reference."""
    if not isinstance(value, str) or not value.startswith(("redis://", "rediss://")):
        raise ConfigError(f"{where}: expected redis://HOST:PORT/DB (or rediss:// for TLS)")
    netloc = value.split("://", 1)[1].split("/", 1)[0]
    userinfo = netloc.rpartition("@")[0]
    if ":" in userinfo and schema.ENV_REF.match(userinfo.split(":", 1)[1]) is None:
        raise ConfigError(
            f"{where}: literal passwords are not allowed; write redis://:${{REDIS_PASSWORD}}@HOST:PORT/DB "
            "or set redis_password to ${VAR} or file:/path"
        )
    if not netloc.rpartition("@")[2]:
        raise ConfigError(f"{where}: expected redis://HOST:PORT/DB (no host given)")
    return value


def redis_connection(url: str, password_ref: object, env: Mapping[str, str]) -> tuple[str, Secret | None]:
    """The URL to connect to, without any password, and the password its reference names."""
    scheme, rest = url.split("://", 1)
    netloc, slash, path = rest.partition("/")
    userinfo, _, host = netloc.rpartition("@")
    password: Secret | None = None
    if ":" in userinfo:
        user, ref = userinfo.split(":", 1)
        password = schema.secret_ref(ref, "redis_url", env, files=False)
        if password is None:
            raise ConfigError(f"redis_url: {ref} is not set")
        userinfo = user
    if password_ref is not None:
        password = schema.secret_ref(password_ref, "redis_password", env)
        if password is None:
            raise ConfigError(f"redis_password: {password_ref} names nothing (unset or missing)")
    netloc = f"{userinfo}@{host}" if userinfo else host
    return f"{scheme}://{netloc}{slash}{path}", password
