"""The ``anomalies:`` config section: behavioural analytics, its detectors and what each one does.

Every detector has an ``action``, one of :data:`ACTIONS`, weakest first; each action includes the
ones before it except ``log`` (an alert is logged too, a quarantine is alerted too):

- ``log``: the event is stored and logged, nobody is paged;
- ``alert``: the event also goes to the alert sink (the operator log and an audit entry until the
  alert sinks of the observability work are plugged in);
- ``throttle``: the key gets a temporary, lower rate limit (``throttle_rpm`` for
  ``throttle_duration``), in this process;
- ``block_network``: the client network (or address, ``block_prefix_v4``/``_v6``) is refused
  before authentication for ``block_duration``, in this process;
- ``quarantine``: the key is refused with 403 ``key_quarantined`` until an operator releases it
  (``keygate keys release KEY_ID``); stored, so every process and instance honours it.

``mode: observe`` runs every detector and stores every event but acts on nothing (no alert either:
events are marked ``observed``). The defaults, documented in docs/anomalies.md, quarantine only on
high-confidence events (a key used from many new networks at once) and alert on the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import schema
from .errors import ConfigError, InvalidRequest
from .schema import positive, setting
from .times import parse_duration

ACTIONS = ("log", "alert", "throttle", "block_network", "quarantine")
"""What a detector may do, weakest first."""

DETECTORS = (
    "new_network",
    "many_networks",
    "surge",
    "team_surge",
    "slow_exfiltration",
    "credential_stuffing",
    "prefix_failures",
    "denial_burst",
    "new_usage",
    "odd_hours",
    "honeytoken",
)
"""Every detector, by the name its events and settings carry (docs/anomalies.md)."""


def duration(value: object, where: str) -> float:
    """Seconds: a number, or a duration such as ``90s``, ``15m``, ``7d`` (times.parse_duration)."""
    if isinstance(value, str):
        try:
            seconds = parse_duration(value, where)
        except InvalidRequest as exc:
            raise ConfigError(exc.message) from None
    else:
        seconds = schema.number(value, where, zero=True)
    return float(seconds)


def _prefix(maximum: int) -> schema.Check:
    def check(value: Any, where: str) -> int:
        found: int = schema.number(value, where, integer=True, maximum=maximum)
        return found

    return check


_action = schema.choice(*ACTIONS)
_count = positive(integer=True)


def _detector(action_: str, threshold_: float, window_: float, factor_: float = 1.0) -> type:
    """A detector's settings class with its own defaults (the same four fields for each)."""

    @dataclass(frozen=True, slots=True)
    class DetectorSettings:
        action: str = setting(action_, _action)
        threshold: float = setting(threshold_, positive())  # the count or score that fires it
        window: float = setting(window_, duration)  # seconds the count is taken over
        factor: float = setting(factor_, positive())  # times the key's baseline, where one applies

    return DetectorSettings


# Per detector: (default action, threshold, window in seconds, factor over baseline).
DEFAULTS: dict[str, tuple[str, float, float, float]] = {
    "new_network": ("alert", 1, 600, 1.0),
    "many_networks": ("quarantine", 5, 600, 1.0),
    "surge": ("throttle", 30, 300, 8.0),
    "team_surge": ("alert", 100, 300, 8.0),
    "slow_exfiltration": ("alert", 200, 6 * 3600, 3.0),
    "credential_stuffing": ("block_network", 8, 1800, 1.0),
    "prefix_failures": ("alert", 5, 600, 1.0),
    "denial_burst": ("alert", 10, 300, 5.0),
    "new_usage": ("alert", 3, 3600, 1.0),
    "odd_hours": ("alert", 10, 3600, 1.0),
    "honeytoken": ("alert", 1, 60, 1.0),
}
_CLASSES: dict[str, Any] = {name: _detector(*DEFAULTS[name]) for name in DETECTORS}


@dataclass(frozen=True, slots=True)
class Detector:
    """One detector's settings, as the analyser reads them."""

    action: str
    threshold: float
    window: float
    factor: float


def _detectors(value: object, where: str) -> dict[str, Detector]:
    data = schema.mapping(value, where)
    unknown = sorted(set(map(str, data)) - set(DETECTORS))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown detector (known: {', '.join(DETECTORS)})")
    out: dict[str, Detector] = {}
    for name in DETECTORS:
        built: Any = schema.build(_CLASSES[name], data.get(name), f"{where}.{name}")
        out[name] = Detector(built.action, built.threshold, built.window, built.factor)
    return out


def default_detectors() -> dict[str, Detector]:
    return _detectors(None, "anomalies.detectors")


@dataclass(frozen=True, slots=True)
class AnomalySettings:
    enabled: bool = setting(True, schema.flag)
    mode: str = setting("act", schema.choice("act", "observe"))
    interval: float = setting(2.0, positive(maximum=60))  # seconds between analysis passes
    # A key's baseline is learned for this long (from its first request) and from at least
    # ``min_learning_requests`` requests before the novelty detectors speak for it.
    learning_period: float = setting(7 * 86400.0, duration)
    min_learning_requests: int = setting(50, _count)
    ipv4_prefix: int = setting(24, _prefix(32))
    ipv6_prefix: int = setting(48, _prefix(128))
    block_prefix_v4: int = setting(32, _prefix(32))  # what block_network blocks: the address by default
    block_prefix_v6: int = setting(64, _prefix(128))
    throttle_rpm: int = setting(10, _count)
    throttle_duration: float = setting(900.0, duration)
    block_duration: float = setting(900.0, duration)
    snapshot_interval: float = setting(60.0, duration)  # baselines written to the store this often
    max_keys: int = setting(20_000, _count)  # baselines kept in memory at most (about 19 KiB each)
    detectors: dict[str, Detector] = setting(default_detectors, _detectors)
