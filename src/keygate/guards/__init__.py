"""The guards of the request path, one concern each, and the one place their order is decided.

:func:`default_guards` is the chain a gateway runs, built from the parts ``server.py`` makes and
injects (:class:`Parts`): nothing here opens a store or picks a counters implementation.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..chain import Guard
from ..config import Settings
from ..counters import Counters
from ..keycache import KeyCache
from ..ownership import Ownership
from ..recorder import Recorder
from ..spend import SpendBook
from ..store import Store
from .access import build_authenticate
from .body import BodyReader
from .budget import budget_guard
from .client_ip import ClientIP
from .global_limits import global_limit
from .honeytoken import Honeytoken
from .lockout import AuthLockout
from .objects import StoredObjects, Visibility
from .policy import AccessPolicy, RequestPolicy
from .prompt_scan import AuditTrail, PromptScan
from .ratelimit import rate_limit
from .record import Record
from .rotation_watch import RotationWatch


@dataclass(frozen=True, slots=True)
class Parts:
    """What the default guards are built from."""

    settings: Settings
    keys: KeyCache  # key and team records, cached in process
    recorder: Recorder  # usage rows and access-log lines, written in batches
    counters: Counters  # rate limits, concurrency gates, budgets in flight
    spend: SpendBook  # budget spend, persisted in batches
    store: Store | None = None  # security events for the audit trail (prompt scan), written in batches
    objects: Ownership | None = None  # owners of stored objects (files, batches...), cached in process


def default_guards(parts: Parts) -> list[Guard]:
    """The request path, in order.

    record (complete phase: accounts every request, rejected or not) → rotation watch (background
    only) → client IP → lockout → authenticate → honeytoken → access policy → body → request policy
    → stored objects (the caller's only, by id and in bodies) → prompt scan → rate limits → budget →
    global upstream caps → (forward).

    The prompt scan runs once the body is read and the model allowed, and before the limits, so
    a refused request costs no quota and a masked body is the one they estimate.
    """
    settings = parts.settings
    access, limits, scan = settings.access, settings.limits, settings.prompt_scan
    trail = AuditTrail(parts.store, settings.usage_flush_interval) if parts.store is not None else None
    budget = budget_guard(parts.counters, limits, parts.spend)
    seen = Visibility(parts.objects, parts.keys) if parts.objects is not None else None
    return [
        Record(parts.recorder),
        RotationWatch(parts.keys, settings.rotation_warning_days),
        ClientIP(access.network),
        AuthLockout(access.network.lockout),
        build_authenticate(settings, parts.keys),
        Honeytoken(),
        AccessPolicy(),
        BodyReader(settings.max_body_bytes, settings.body_read_timeout),
        RequestPolicy(),
        *([StoredObjects(seen, limits, budget)] if seen is not None else []),
        PromptScan(scan.secrets, scan.pii, trail),
        rate_limit(parts.counters, limits),
        budget,
        global_limit(limits.global_),
    ]
