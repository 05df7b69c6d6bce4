"""The ``audit:`` and ``alerts:`` sections: where the audit stream is exported, when policy
denials become a security event, and where alerts are sent.

Declared here once (``schema.setting``), read by ``config.py``. An alert sink's shared secret is a
reference (``${VAR}`` or ``file:/path``), resolved by :func:`parse_alerts` when the settings are
loaded; a literal is refused like every other secret of the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import schema
from .errors import ConfigError
from .schema import caller, positive, setting
from .types import Secret

ALERT_EVENTS = (
    "honeytoken_used",
    "upstream_key_rejected",
    "budget_soft_threshold",
    "budget_exhausted",
    "lockout",
    "policy_denials",
    "admin_auth_failures",
    "audit_verify_failed",
)
"""The events keygate itself emits; analytics may emit more kinds (a sink's filter may name them)."""


def _syslog(value: object, where: str) -> str:
    """``unix:/dev/log`` (a unix socket) or ``udp:HOST:PORT``."""
    if isinstance(value, str) and value.startswith("unix:/") and len(value) > 6:
        return value
    if isinstance(value, str) and value.startswith("udp:"):
        host, _, port = value[4:].rpartition(":")
        if host and port.isdigit() and 0 < int(port) < 65536:
            return value
    raise ConfigError(f"{where}: expected unix:/path/to/socket or udp:HOST:PORT")


def _optional_path(value: object, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a file path")
    return value


@dataclass(frozen=True, slots=True)
class AuditSettings:
    """``audit:``. Every entry is also written, as it is committed, to ``export_file`` (JSON lines)
    and to ``syslog``; ``policy_denials`` refusals (403) of one key within ``policy_denials_window``
    seconds make one ``security.policy_denials`` entry, ``admin_auth_failures`` failed admin-API
    authentications from one address within ``admin_auth_failures_window`` one
    ``security.admin_auth_failures`` entry (0 turns either off)."""

    export_file: str | None = setting(None, _optional_path)
    syslog: str | None = setting(None, lambda v, w: None if v is None else _syslog(v, w))
    policy_denials: int = setting(20, positive(integer=True, zero=True))
    policy_denials_window: float = setting(60.0, positive())
    admin_auth_failures: int = setting(10, positive(integer=True, zero=True))
    admin_auth_failures_window: float = setting(60.0, positive())


@dataclass(frozen=True, slots=True)
class AlertSink:
    """One entry of ``alerts:``: a generic signed webhook or a Slack-compatible one."""

    url: str = setting("", schema.url)
    format: str = setting("webhook", schema.choice("webhook", "slack"))
    secret: Secret | None = setting(None, caller)  # ${VAR} or file:/path; required for webhook
    events: tuple[str, ...] = setting((), caller)  # empty: every event
    queue_size: int = setting(1000, positive(integer=True, maximum=100_000))
    retries: int = setting(4, positive(integer=True, zero=True, maximum=10))
    backoff: float = setting(0.5, positive(maximum=60))
    timeout: float = setting(5.0, positive(maximum=60))
    secret_ref: str = ""  # the reference as written, for messages (never the value)


def _events(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(e, str) and e for e in value):
        raise ConfigError(f"{where}: expected a list of event names ({', '.join(ALERT_EVENTS)}, ...)")
    return tuple(value)


def parse_alerts(raw: object, env: Mapping[str, str]) -> tuple[AlertSink, ...]:
    """``alerts:``, a list of sinks. A webhook sink needs its secret; a Slack one may go without
    (the incoming-webhook URL is its credential, so keep the config file private)."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError("alerts: expected a list of sinks")
    sinks = []
    for i, spec in enumerate(raw):
        where = f"alerts[{i}]"
        data: dict[str, Any] = schema.mapping(spec, where)
        if "url" not in data:
            raise ConfigError(f"{where}.url: required")
        ref = data.get("secret")
        secret = schema.secret_ref(ref, f"{where}.secret", env) if ref is not None else None
        if ref is not None and secret is None:
            raise ConfigError(f"{where}.secret: {ref} is unset or empty")
        events = _events(data["events"], f"{where}.events") if "events" in data else ()
        sink = schema.build(
            AlertSink, data, where, env, secret=secret, events=events, secret_ref=str(ref or "")
        )
        if sink.format == "webhook" and sink.secret is None:
            raise ConfigError(
                f"{where}.secret: a webhook sink needs a shared secret (${{VAR}} or file:/path)"
            )
        sinks.append(sink)
    return tuple(sinks)
