"""What an operator is shown of each record: the same for ``--json`` output and admin-API answers.

A view never holds a hash or sealed material; the only secret one may carry is the one an
operation has just issued (``key`` or ``token``), added by that operation.
"""

from __future__ import annotations

from typing import Any

from ..store import AdminToken, AuditEntry, UsageSummary
from ..times import fmt_time
from ..types import KeyRecord, Team


def key_view(r: KeyRecord) -> dict[str, Any]:
    return {
        "id": r.id,
        "name": r.name,
        "hint": r.hint,
        "status": r.status,
        "created_at": fmt_time(r.created_at),
        "last_used_at": fmt_time(r.last_used_at) if r.last_used_at else None,
        "team_id": r.team_id,
        "upstream": r.upstream,
        "policy": r.policy,
    }


def team_view(t: Team) -> dict[str, Any]:
    return {"id": t.id, "name": t.name, "created_at": fmt_time(t.created_at), "policy": t.policy}


def token_view(t: AdminToken) -> dict[str, Any]:
    return {
        "id": t.id,
        "name": t.name,
        "hint": t.hint,
        "role": t.role,
        "status": t.status,
        "created_at": fmt_time(t.created_at),
        "revoked_at": fmt_time(t.revoked_at) if t.revoked_at else None,
    }


def audit_view(e: AuditEntry) -> dict[str, Any]:
    return {
        "id": e.id,
        "ts": fmt_time(e.ts),
        "actor": e.actor,
        "action": e.action,
        "target": e.target,
        "origin": e.origin,
        "details": e.details,
        "hash": e.hash,
    }


def usage_view(s: UsageSummary, name: str | None) -> dict[str, Any]:
    return {
        "key_id": s.key_id,
        "name": name,
        "requests": s.requests,
        "errors": s.errors,
        "prompt_tokens": s.prompt_tokens,
        "completion_tokens": s.completion_tokens,
        "total_tokens": s.total_tokens,
        "estimated": s.estimated,
        "first": fmt_time(s.first_ts),
        "last": fmt_time(s.last_ts),
    }
