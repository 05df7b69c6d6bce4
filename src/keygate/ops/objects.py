"""Owners of stored OpenAI objects: list, assign, unassign (docs/objects.md).

An object keygate did not create (made before keygate, or directly on the upstream account)
belongs to no key until an operator assigns it; an assignment replaces any owner. Each change is
written with its audit entry in one transaction, and running gateways pick it up on their next
request touching an object (``ownership.py``). keygate does not ask the upstream whether the id
exists: assigning an id that names nothing gives a key a record of nothing.
"""

from __future__ import annotations

import re
import time
from typing import Any, Final

from ..errors import InvalidRequest, NotFound
from ..store import ObjectRow, Store
from ..times import fmt_time
from .audit import Actor
from .validate import check_object

# The kind of an object, from its id's prefix (OpenAI's: file-..., batch_..., vs_..., ...).
PREFIXES: Final = (
    ("file-", "file"),
    ("upload_", "upload"),
    ("batch_", "batch"),
    ("vs_", "vector_store"),
    ("conv_", "conversation"),
    ("resp_", "response"),
    ("chatcmpl-", "chat_completion"),
)
KINDS: Final = tuple(k for _, k in PREFIXES)
_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}")  # (routes._ID: what a path admits)


def kind_of(object_id: str) -> str:
    """The kind an id names, or :class:`InvalidRequest` for an id of no known kind."""
    if not _ID.fullmatch(object_id):
        raise InvalidRequest("object id: 1-200 characters of A-Z a-z 0-9 . _ : -", param="id")
    for prefix, kind in PREFIXES:
        if object_id.startswith(prefix):
            return kind
    known = ", ".join(p + "..." for p, _ in PREFIXES)
    raise InvalidRequest(f"object id: not an id of a stored object keygate knows ({known})", param="id")


def object_view(row: ObjectRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "kind": row.kind,
        "key_id": row.key_id,
        "recorded_at": fmt_time(row.created_at),
    }


def list_views(
    store: Store, key_id: str | None = None, kind: str | None = None, limit: int = 1000
) -> list[dict[str, Any]]:
    if not 1 <= limit <= 1000:
        raise InvalidRequest("limit must be an integer from 1 to 1000", param="limit")
    if kind is not None and kind not in KINDS:
        raise InvalidRequest(f"kind: one of {', '.join(KINDS)}", param="kind")
    return [object_view(r) for r in store.list_objects(key_id, kind, limit)]


def assign(store: Store, actor: Actor, object_id: str, body: Any) -> dict[str, Any]:
    """Make ``body["key_id"]`` the owner of the object (whoever owned it before)."""
    body = check_object(body, {"key_id"}, {"key_id"})
    key_id = body["key_id"]
    kind = kind_of(object_id)
    if not isinstance(key_id, str) or store.get_key(key_id) is None:
        raise NotFound(f"no key with id {str(key_id)[:80]!r}", param="key_id")
    previous = _owner(store, object_id)
    audit = actor.record("objects.assign", object_id, kind=kind, key_id=key_id, previous=previous)
    store.set_object_owner(object_id, kind, key_id, time.time(), audit)
    row = store.get_object(object_id)
    assert row is not None
    return object_view(row)


def unassign(store: Store, actor: Actor, object_id: str) -> dict[str, Any]:
    """The object belongs to no key any more (it stays on the upstream account)."""
    kind = kind_of(object_id)
    previous = _owner(store, object_id)
    if previous is None:
        raise NotFound(f"no key owns {object_id[:80]!r}", param="id")
    store.set_object_owner(
        object_id,
        kind,
        None,
        time.time(),
        actor.record("objects.unassign", object_id, kind=kind, previous=previous),
    )
    return {"id": object_id, "kind": kind, "key_id": None, "previous_key_id": previous}


def _owner(store: Store, object_id: str) -> str | None:
    row = store.get_object(object_id)
    return row.key_id if row is not None else None
