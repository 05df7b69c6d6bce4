"""The one validator for policy JSON (keys and teams), whichever feature owns each field.

The CLI builds a policy from its flags, the admin API takes policy JSON from the network; both go
through :func:`validate_policy` before anything is stored, and everything in it reaches guards on
the hot path. An unknown field or a malformed value is refused with a message naming it, so a
guard never meets a value it cannot read, and no number is stored that JSON readers disagree on
(integers above 2**53 - 1, non-finite numbers). Times are stored in one form, ISO 8601 UTC
(``times.iso``), whether they came as text or as epoch seconds.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import Any

from .. import schema, times
from ..access_config import SCAN_MODES
from ..errors import ConfigError, InvalidRequest
from ..limitconf import POLICY_KEYS as LIMIT_KEYS
from ..limitconf import check_policy as check_limits
from ..routes import ROUTE_NAMES
from .validate import NAME_MAX, has_control

_MAX_LIST = 256


def _str_list(name: str, value: Any, item: Callable[[str], Any] | None = None) -> list[str]:
    if not isinstance(value, list) or len(value) > _MAX_LIST or not all(isinstance(v, str) for v in value):
        raise InvalidRequest(f"policy.{name}: expected a list of at most {_MAX_LIST} strings", param="policy")
    for v in value:
        # Each entry is shown in `keys list`: no control characters (they could forge rows there).
        if len(v) > NAME_MAX or has_control(v):
            raise InvalidRequest(
                f"policy.{name}: entries are at most {NAME_MAX} characters, without control characters",
                param="policy",
            )
        if item is not None:
            try:
                item(v)
            except ValueError:
                raise InvalidRequest(f"policy.{name}: {v[:80]!r} is not valid", param="policy") from None
    return list(value)


def _route(name: str) -> None:
    if name not in ROUTE_NAMES:
        raise ValueError(name)


def _positive_int(name: str, value: Any) -> int:
    try:
        found: int = schema.number(value, f"policy.{name}", integer=True)
    except ConfigError as exc:
        raise InvalidRequest(exc.message, param="policy") from None
    return found


def _timestamp(name: str, value: Any) -> str:
    try:
        return times.iso(times.parse_instant(value, f"policy.{name}"))
    except InvalidRequest as exc:
        raise InvalidRequest(exc.message, param="policy") from None


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequest(f"policy.{name}: expected true or false", param="policy")
    return value


def _prompt_scan(name: str, value: Any) -> dict[str, str]:
    """``{"secrets": MODE, "pii": MODE}``, either or both (guards/prompt_scan.py reads it)."""
    if not isinstance(value, Mapping) or not value:
        raise InvalidRequest(f"policy.{name}: expected an object with secrets and/or pii", param="policy")
    out: dict[str, str] = {}
    for field, mode in value.items():
        if field not in ("secrets", "pii"):
            raise InvalidRequest(f"policy.{name}.{str(field)[:80]}: unknown field", param="policy")
        if mode not in SCAN_MODES:
            raise InvalidRequest(
                f"policy.{name}.{field}: expected one of {', '.join(SCAN_MODES)}", param="policy"
            )
        out[field] = mode
    return out


SHARE_MODES = ("key", "team")


def _share(name: str, value: Any) -> str:
    """Who sees a key's stored objects: the key alone, or its team (guards/objects.py)."""
    if value not in SHARE_MODES:
        raise InvalidRequest(f"policy.{name}: expected one of {', '.join(SHARE_MODES)}", param="policy")
    return str(value)


_ACCESS: dict[str, Callable[[str, Any], Any]] = {
    "models": lambda n, v: _str_list(n, v),
    "routes": lambda n, v: _str_list(n, v, _route),
    "allow_ips": lambda n, v: _str_list(n, v, lambda c: ipaddress.ip_network(c, strict=False)),
    "expires_at": _timestamp,
    "max_body_bytes": _positive_int,
    "max_output_tokens": _positive_int,
    "honeytoken": _flag,
    "rotate_every": _positive_int,
    "rotated_at": _timestamp,
    "prompt_scan": _prompt_scan,
    "share_objects": _share,
}


def validate_policy(policy: Any) -> dict[str, Any]:
    """A checked copy of ``policy``, or :class:`InvalidRequest` naming the first bad field."""
    if not isinstance(policy, Mapping):
        raise InvalidRequest("policy must be a JSON object", param="policy")
    out: dict[str, Any] = {}
    for name, value in policy.items():
        if name in _ACCESS:
            out[name] = _ACCESS[name](name, value)
        elif name not in LIMIT_KEYS:
            raise InvalidRequest(f"policy.{str(name)[:80]}: unknown policy field", param="policy")
    try:
        out.update(check_limits({k: v for k, v in policy.items() if k in LIMIT_KEYS}, "policy"))
    except ConfigError as exc:
        raise InvalidRequest(exc.message, param="policy") from None
    return out
