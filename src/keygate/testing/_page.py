"""Cursor pages and collections of the mock upstream's stored objects."""

from __future__ import annotations

from ._payloads import Json

Result = tuple[int, "Json | bytes"]


class Kind:
    """One collection: objects by id, in creation order."""

    def __init__(self) -> None:
        self.items: dict[str, Json] = {}


def page(items: list[Json], query: dict[str, str], default_order: str = "desc") -> Json:
    """OpenAI's cursor page over ``items`` (creation order), honouring limit, order, after, before."""
    order = query.get("order", default_order)
    ordered = list(reversed(items)) if order == "desc" else list(items)
    limit = max(1, min(int(query.get("limit", "20") or 20), 10000))
    ids = [i["id"] for i in ordered]
    if "after" in query and query["after"] in ids:
        ordered = ordered[ids.index(query["after"]) + 1 :]
        chosen, more = ordered[:limit], len(ordered) > limit
    elif "before" in query and query["before"] in ids:
        ordered = ordered[: ids.index(query["before"])]
        chosen, more = ordered[-limit:], len(ordered) > limit
    else:
        chosen, more = ordered[:limit], len(ordered) > limit
    return {
        "object": "list",
        "data": chosen,
        "first_id": chosen[0]["id"] if chosen else None,
        "last_id": chosen[-1]["id"] if chosen else None,
        "has_more": more,
    }
