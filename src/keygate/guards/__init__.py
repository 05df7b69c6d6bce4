"""The guards of the request path, one concern each, and the one place their order is decided.

:func:`default_guards` is the chain a gateway runs, built from the parts ``server.py`` makes and
injects (:class:`Parts`): nothing here opens a store or picks a counters implementation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..analytics.actions import AlertSink, LogAuditSink
from ..analytics.watch import AnomalyWatch
from ..chain import Guard
from ..config import Settings
from ..counters import Counters, SharedCounters
from ..events import SecurityEvents
from ..keycache import KeyCache
from ..ownership import Ownership
from ..recorder import Recorder
from ..spend import SpendBook
from ..store import Store
from .access import build_authenticate
from .anomaly import AnomalyGate, AnomalyRecord
from .body import BodyReader
from .budget import budget_guard
from .client_ip import ClientIP
from .global_limits import global_limit
from .honeytoken import Honeytoken
from .lockout import AuthLockout
from .objects import Visibility, stored_objects
from .per_instance import NeedsSharedCounters, networked
from .policy import AccessPolicy, RequestPolicy
from .prompt_scan import AuditTrail, PromptScan
from .ratelimit import rate_limit
from .record import Record
from .rotation_watch import RotationWatch
from .shared_limits import SharedLimits


@dataclass(frozen=True, slots=True)
class Parts:
    """What the default guards are built from."""

    settings: Settings
    keys: KeyCache  # key and team records, cached in process
    recorder: Recorder  # usage rows and access-log lines, written in batches
    counters: Counters  # rate limits, concurrency gates, budgets in flight
    spend: SpendBook  # budget spend, persisted in batches
    store: Store | None = None  # security events for the audit trail (prompt scan), written in batches
    events: SecurityEvents | None = None  # lockouts, honeytokens, budgets, denials: audit and alerts
    observe: Callable[[Any], None] | None = None  # each finished request, for the metrics (metrics.py)
    alerts: AlertSink | None = None  # where anomaly alerts go (None: the operator log and the audit trail)
    objects: Ownership | None = None  # owners of stored objects (files, batches...), cached in process


def default_guards(parts: Parts) -> list[Guard]:
    """The request path, in order.

    record (complete phase: accounts every request, rejected or not) → rotation watch (background
    only) → client IP → anomaly record (blocked networks; features for the analyser) → lockout →
    authenticate → honeytoken → anomaly gate (quarantined and throttled keys) → access policy →
    body → request policy → stored objects (the caller's only, by id and in bodies) → prompt scan
    → rate limits → budget → global upstream caps → (forward).

    The prompt scan runs once the body is read and the model allowed, and before the limits, so
    a refused request costs no quota and a masked body is the one they estimate. On counters
    shared by several instances, one guard (``shared_limits``) decides rate limits, budget and
    global caps together, so a request costs one round trip to admit and one to settle.
    """
    settings = parts.settings
    access, limits, scan = settings.access, settings.limits, settings.prompt_scan
    trail = (
        AuditTrail(parts.store, settings.usage_flush_interval, settings.write_buffer_rows)
        if parts.store is not None
        else None
    )
    counters = parts.counters
    limit_guards: list[Guard]
    # The budget guard also holds a batch's worst case for the stored-objects guard; on shared
    # counters it is not in the chain (SharedLimits decides) and only does that.
    budget = budget_guard(counters, limits, parts.spend, parts.events)
    if isinstance(counters, SharedCounters):
        limit_guards = [
            SharedLimits(counters, limits, parts.spend, settings.on_counter_failure, parts.events)
        ]
    else:
        # A networked database without shared counters: limits stored on keys and teams are
        # refused rather than kept per instance (the settings were checked at start-up).
        alone: list[Guard] = [NeedsSharedCounters()] if networked(settings.database_url) else []
        limit_guards = [
            *alone,
            rate_limit(counters, limits),
            budget,
            global_limit(limits.global_),
        ]
    watch = None
    if parts.store is not None and settings.anomalies.enabled:
        sink = parts.alerts
        if sink is None:  # the operator log and the audit trail, and the alert sinks of `alerts:`
            sink = LogAuditSink(parts.store, parts.events.alerter if parts.events is not None else None)
        watch = AnomalyWatch(settings.anomalies, parts.store, sink)
    seen = Visibility(parts.objects, parts.keys) if parts.objects is not None else None
    return [
        Record(parts.recorder, parts.events, parts.observe),
        RotationWatch(parts.keys, settings.rotation_warning_days),
        ClientIP(access.network),
        *([AnomalyRecord(watch)] if watch is not None else []),
        *(
            [AuthLockout(access.network.lockout, counters, parts.events)]
            if access.network.lockout.enabled
            else []
        ),
        build_authenticate(settings, parts.keys),
        Honeytoken(parts.events),
        *([AnomalyGate(watch, parts.keys)] if watch is not None else []),
        AccessPolicy(),
        BodyReader(settings.max_body_bytes, settings.body_read_timeout),
        RequestPolicy(),
        *([stored_objects(seen, limits, budget, settings.on_counter_failure)] if seen is not None else []),
        PromptScan(scan.secrets, scan.pii, trail),
        *limit_guards,
    ]
