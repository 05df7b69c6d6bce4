"""Reading and proving the audit trail: list entries, verify the chain, print an anchor.

``verify`` reads every entry of the chain and checks it with :func:`keygate.audit_chain.verify`
under the key derived from the pepper; a failure is returned (the front ends exit 1 / answer
``ok: false``) and reported through ``on_failure`` (the ``audit_verify_failed`` alert).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from ..audit_chain import GENESIS, chain_key, parse_anchor
from ..audit_chain import verify as verify_chain
from ..config import Settings
from ..errors import InvalidRequest
from ..store import Store
from ..times import instant, parse_duration
from .views import audit_view


def since_of(text: str | None) -> float | None:
    """``--since``: an ISO 8601 time, seconds since the epoch, or a duration back from now (24h)."""
    if text is None or text == "":
        return None
    found = instant(float(text)) if text.replace(".", "", 1).isdigit() else instant(text)
    if found is not None:
        return found
    try:
        return time.time() - parse_duration(text, "since")
    except InvalidRequest:
        raise InvalidRequest(
            "since: expected an ISO 8601 time (2027-01-31T00:00:00Z), seconds since the epoch, or a "
            "duration back from now (90m, 24h, 7d)",
            param="since",
        ) from None


def entries(
    store: Store,
    limit: int = 100,
    action: str | None = None,
    actor: str | None = None,
    since: str | None = None,
) -> list[dict[str, Any]]:
    """The newest entries first, at most ``limit`` (1 to 10000); ``action`` ending in ``.`` or
    ``*`` is a prefix (``keys.``, ``security.*``)."""
    if not 1 <= limit <= 10_000:
        raise InvalidRequest("limit must be an integer from 1 to 10000", param="limit")
    found = store.list_audit(limit, action or None, actor=actor or None, since=since_of(since))
    return [audit_view(e) for e in found]


def anchor(store: Store) -> dict[str, Any]:
    """The chain's head, to keep somewhere the database's writers cannot reach."""
    seq, digest, _ = store.audit_head()
    return {"seq": seq, "hash": digest, "anchor": f"{seq}:{digest}"}


def verify(
    settings: Settings,
    store: Store,
    anchor_text: str | None = None,
    on_failure: Callable[[Mapping[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Check the whole chain (and, with an anchor ``SEQ:HASH``, that it still holds that entry)."""
    anchored: tuple[int, str] | None = None
    if anchor_text is not None:
        try:
            anchored = parse_anchor(anchor_text)
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="anchor") from None
    if not settings.pepper:
        raise InvalidRequest("the audit chain cannot be checked without the pepper (its key)")
    key = chain_key(settings.pepper.reveal())
    head_seq, head_hash, start = store.audit_head()
    if anchored is not None and anchored[0] == 0 and anchored[1] != GENESIS:
        raise InvalidRequest("anchor: entry 0 is the empty chain, whose hash is 64 zeros", param="anchor")
    if anchored is not None and 0 < anchored[0] < start:
        raise InvalidRequest(f"anchor: entry {anchored[0]} predates the chain (it starts at {start})")
    rows = store.audit_chain_rows(start)
    verdict = verify_chain(rows, key, (head_seq, head_hash), start=start, start_prev=GENESIS, anchor=anchored)
    result = verdict.as_dict()
    result["chain_start"] = start
    if start > 1:
        result["message"] += f" (entries 1 to {start - 1} predate the chain and are not covered)"
    if anchored is not None:
        result["anchor"] = f"{anchored[0]}:{anchored[1]}"
        if verdict.ok:
            result["message"] += f"; anchor entry {anchored[0]} present with its hash"
    if not verdict.ok and on_failure is not None:
        on_failure(result)
    return result
