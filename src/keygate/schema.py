"""The checks every setting and every operator input is read through, each written once.

Config sections (``config.py``, ``access_config.py``, ``limitconf.py``) declare their settings as
frozen dataclasses whose fields carry their check (:func:`setting`); :func:`build` reads a YAML
mapping into such a class, refusing unknown names and naming the field path in every error. The
same checks serve policy JSON (``ops/policy.py``) and CLI flags, whose callers turn the
:class:`~keygate.errors.ConfigError` into a request error.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
import ssl
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

from .errors import ConfigError
from .types import Secret

MAX_COUNT: Final = 2**53 - 1  # the largest integer JSON readers agree on (a double's 53 bits)
MAX_AMOUNT: Final = 1e15  # dollars, seconds, tokens: anything larger is a mistake, not a limit
ENV_REF: Final = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}\Z")

T = TypeVar("T")
Check = Callable[[Any, str], Any]


# -- values ---------------------------------------------------------------------------------------


def number(
    value: object,
    where: str,
    *,
    integer: bool = False,
    zero: bool = False,
    maximum: float | None = None,
) -> Any:
    """A finite number above zero (or zero, with ``zero``), at most ``maximum``; an int with
    ``integer``. Booleans are not numbers here. Raises ``ConfigError`` naming ``where``."""
    kind = "a whole number" if integer else "a number"
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if ok and integer and not isinstance(value, int):
        ok = False
    if ok and isinstance(value, float) and not math.isfinite(value):
        ok = False
    limit = maximum if maximum is not None else (MAX_COUNT if integer else MAX_AMOUNT)
    if not ok or value < 0 or (value == 0 and not zero) or value > limit:  # type: ignore[operator]
        low = ">= 0" if zero else "> 0"
        top = f"{int(limit):,}" if integer or limit >= 1e6 else f"{limit:g}"
        raise ConfigError(f"{where}: expected {kind} {low} and at most {top}, got {_show(value)}")
    return value


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def is_loopback(host: str) -> bool:
    """Whether a URL's host is this machine: a loopback address, or the name ``localhost``."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def url(value: object, where: str, *, insecure_ok: bool = False) -> str:
    """An ``http(s)`` URL with a host and no credentials, query or fragment; plain ``http`` only to
    a loopback host unless ``insecure_ok``. Returned without a trailing slash."""
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a URL")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}: expected an http(s) URL, got {_show(value)}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigError(f"{where}: no credentials, query or fragment allowed in the URL")
    if parts.scheme == "http" and not insecure_ok and not is_loopback(parts.hostname):
        raise ConfigError(f"{where}: https is required except for a loopback host")
    return value.rstrip("/")


def secret_ref(value: object, where: str, env: Mapping[str, str], *, files: bool = True) -> Secret | None:
    """The secret a reference names: ``${ENV_VAR}`` or (with ``files``) ``file:/absolute/path``.

    A literal is refused: secrets never appear in the config file. None when the variable is unset
    or empty, or the file does not exist.
    """
    text = value.strip() if isinstance(value, str) else None
    if text is None:
        raise ConfigError(f"{where}: expected a reference such as ${{OPENAI_API_KEY}}")
    if files and text.startswith("file:"):
        return read_secret_file(text, where)
    m = ENV_REF.match(text)
    if m is None:
        also = " (or file:/path)" if files else ""
        raise ConfigError(
            f"{where}: literal secrets are not allowed in the config file; put the secret in an "
            f"environment variable and write a reference such as ${{OPENAI_API_KEY}}{also}"
        )
    found = env.get(m.group(1))
    return Secret(found) if found else None


def read_secret_file(ref: str, where: str) -> Secret | None:
    """The secret a ``file:/path`` reference names (Docker/Kubernetes secrets); None if absent."""
    path = Path(ref[len("file:") :])
    if not path.is_absolute():
        raise ConfigError(f"{where}: file: references need an absolute path")
    try:
        found = path.read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror}") from None
    return Secret(found) if found else None


def beside(path: Path, base: Path | None) -> Path:
    """``path`` as the config file means it: a relative path is relative to the file's folder."""
    return base / path if base is not None and not path.is_absolute() else path


def pem_bundle(path: Path, where: str) -> Path:
    """A file of CA certificates in PEM that TLS can load."""
    try:
        ssl.create_default_context(cafile=str(path))
    except (OSError, ssl.SSLError, ValueError):
        raise ConfigError(f"{where}: {path} is not a readable PEM file of CA certificates") from None
    return path


def networks(value: object, where: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """A list of IP addresses or CIDR networks."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list of CIDR networks")
    out = []
    for item in value:
        try:
            out.append(ipaddress.ip_network(str(item), strict=False))
        except ValueError:
            raise ConfigError(f"{where}: {_show(item)} is not an IP address or CIDR network") from None
    return tuple(out)


def mapping(value: object, where: str) -> dict[str, Any]:
    """A section: a mapping (absent or empty means all defaults)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping")
    return value


def choice(*allowed: str) -> Check:
    def check(value: Any, where: str) -> str:
        if value not in allowed:
            raise ConfigError(f"{where}: expected one of {', '.join(allowed)}, got {_show(value)}")
        return str(value)

    return check


def text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a non-empty string")
    return value


def optional_text(value: Any, where: str) -> str | None:
    return None if value is None else text(value, where)


def flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false")
    return value


def positive(*, integer: bool = False, zero: bool = False, maximum: float | None = None) -> Check:
    """:func:`number` as a field check; an integer setting keeps its type, a float one is a float."""

    def check(value: Any, where: str) -> Any:
        found = number(value, where, integer=integer, zero=zero, maximum=maximum)
        return found if integer else float(found)

    return check


# -- sections -------------------------------------------------------------------------------------


def caller(value: Any, where: str) -> Any:
    """The check of a setting whose caller parses it (it needs more than its own value)."""
    raise AssertionError(f"{where} is parsed by the caller of build()")


def setting(
    default: Any,
    check: Check,
    *,
    key: str | None = None,
    env: str | None = None,
    doc: str = "",
) -> Any:
    """A dataclass field that is also a setting: its default, its check, the YAML name when it
    differs from the attribute (``key``), and the environment variable that overrides it
    (``env``). A mutable or computed default is given as a zero-argument callable."""
    metadata = {"check": check, "key": key, "env": env, "doc": doc}
    if callable(default):
        return dataclasses.field(default_factory=default, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def build(cls: type[T], raw: object, where: str, env: Mapping[str, str] | None = None, **given: Any) -> T:
    """An instance of the settings dataclass ``cls`` from the YAML mapping ``raw``.

    Unknown names are refused; a value present in ``raw`` (or in the environment variable a setting
    names, which wins) goes through its field's check, which names ``where.key`` in its error;
    absent ones take their default. ``given`` supplies the settings the caller parsed itself
    (declared with :func:`caller`) and fields that are not settings at all.
    """
    data = mapping(raw, where)
    keys: dict[str, dataclasses.Field[Any]] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if "check" in f.metadata:
            keys[f.metadata["key"] or f.name] = f
    unknown = sorted(set(map(str, data)) - set(keys))
    if unknown:
        raise ConfigError(f"{_join(where, unknown[0])}: unknown setting")
    values = dict(given)
    for name, f in keys.items():
        if f.name in given:
            continue
        variable = f.metadata["env"]
        if variable and env is not None and env.get(variable):
            values[f.name] = f.metadata["check"](env[variable], variable)
        elif name in data:
            values[f.name] = f.metadata["check"](data[name], _join(where, name))
    return cls(**values)


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name
