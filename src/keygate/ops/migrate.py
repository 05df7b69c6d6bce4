"""Moving to PostgreSQL: copy a SQLite store into a PostgreSQL one (``keygate migrate --from``).

The rules an operator relies on live here, the SQL in :mod:`keygate.store.transfer`: only from
SQLite to PostgreSQL; a target holding rows that did not come from this source is refused unless
the operator says so (``into_non_empty``); a second run copies nothing; the copy and its audit
entry commit together.
"""

from __future__ import annotations

from typing import Any

from ..errors import Conflict, InvalidRequest
from ..store import SQLiteStore, Store
from .audit import Actor


def copy(
    source: Store, target: Store, source_label: str, actor: Actor, *, into_non_empty: bool
) -> dict[str, Any]:
    from ..store import transfer
    from ..store.postgres import PostgresStore

    if not isinstance(source, SQLiteStore) or not isinstance(target, PostgresStore):
        raise InvalidRequest("--from must be a sqlite:/// database and --to a postgresql:// one")
    again = transfer.previous_copy(target, source_label) is not None
    busy = transfer.occupied(target)
    if busy and not again and not into_non_empty:
        raise Conflict(
            f"the target database is not empty ({', '.join(busy)} hold rows that were not copied from "
            f"{source_label}); pass --into-non-empty to add this store's rows to it anyway"
        )
    record = actor.record("migrate.copy", target.url, source=source_label)
    counts = transfer.copy(source, target, source_label, record)
    copied = {k: v for k, v in counts.items() if v and k != "meta"}
    return {"source": source_label, "target": target.url, "copied": copied, "again": again}
