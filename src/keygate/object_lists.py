"""Lists of stored objects, filtered to the caller's and paged again (docs/objects.md).

``GET /v1/files``, ``/v1/batches``, ``/v1/vector_stores`` and ``/v1/chat/completions`` list the
whole upstream account. keygate asks the upstream for pages of :data:`UPSTREAM_PAGE` objects,
starting at the client's cursor (``after``, or ``before``), keeps the objects the caller may see
(``guards.objects.Visibility``), and goes on to the next upstream page until it has the client's
``limit`` (at most :data:`MAX_LIMIT`) plus one (which tells ``has_more``), or the upstream has no
more. The answer is the upstream's list shape with keygate's own ``data``, ``first_id``,
``last_id`` and ``has_more``, so the client's next cursor is always one of its own objects.

The work is bounded: at most :data:`MAX_PAGES` upstream pages per client request (so up to
``MAX_PAGES * UPSTREAM_PAGE`` other objects scanned). When that bound is reached the page holds
what was found and ``has_more`` is true; a page that found none of the caller's objects by then
is answered empty with ``has_more`` true and no ids: the caller's objects, if any, are further
on than keygate looks in one request, and an operator can see it in the log.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import orjson

from .context import Context
from .errors import KeygateError
from .forward import Answer, Forwarder
from .guards.objects import Visibility
from .routes import query_pairs

log = logging.getLogger("keygate.objects")

UPSTREAM_PAGE: Final = 100
MAX_LIMIT: Final = 100
MAX_PAGES: Final = 20
DEFAULT_LIMIT: Final = 20


class Lister:
    """Answers a list route with the caller's objects only."""

    def __init__(self, seen: Visibility, forwarder: Forwarder) -> None:
        self._seen = seen
        self._forwarder = forwarder

    async def page(self, ctx: Context) -> Answer | KeygateError:
        """The answer for a list request (an upstream error answer is returned as it came)."""
        route = ctx.route
        assert route is not None
        kind = route.kind
        params = [(k, v) for k, v in query_pairs(ctx.query)] if ctx.query else []
        given = dict(params)
        limit = min(int(given.get("limit", DEFAULT_LIMIT) or DEFAULT_LIMIT), MAX_LIMIT) or 1
        backwards = "before" in given and "after" not in given
        cursor = given.get("before" if backwards else "after")
        rest = [(k, v) for k, v in params if k not in ("limit", "after", "before")]
        found: list[Any] = []
        last: Answer | None = None
        template: dict[str, Any] = {}
        upstream_more = False
        pages = 0
        while pages < MAX_PAGES and len(found) <= limit:
            pages += 1
            query = [*rest, ("limit", str(UPSTREAM_PAGE))]
            if cursor is not None:
                query.append(("before" if backwards else "after", cursor))
            ctx.query = "&".join(f"{k}={v}" for k, v in query)  # values checked by canonical_query
            if last is not None:
                last.close()
            answer = await self._forwarder.open(ctx)
            if not isinstance(answer, Answer):
                return answer
            last = answer
            response = answer.response
            if response.status != 200 or answer.refusal is not None:
                return answer
            try:
                data = orjson.loads(response.body)
                items = data["data"]
                assert type(items) is list
            except (orjson.JSONDecodeError, KeyError, TypeError, AssertionError):
                return answer  # not a list answer: relayed as it is
            template = data
            upstream_more = data.get("has_more") is True
            ids = [i.get("id") if type(i) is dict else None for i in items]
            mine = [
                i
                for i, oid in zip(items, ids, strict=True)
                if type(oid) is str and self._seen.visible(ctx, oid, kind)
            ]
            found = mine + found if backwards else found + mine
            if not items or not upstream_more:
                break
            edge = ids[0] if backwards else ids[-1]
            if type(edge) is not str:
                break
            cursor = edge
        assert last is not None
        more = len(found) > limit or (upstream_more and pages >= MAX_PAGES)
        if pages >= MAX_PAGES and upstream_more and len(found) <= limit:
            log.warning("object list stopped at its bound", extra={"route": route.name, "found": len(found)})
        page = found[-limit:] if backwards else found[:limit]
        body = {
            **template,
            "data": page,
            "first_id": page[0].get("id") if page else None,
            "last_id": page[-1].get("id") if page else None,
            "has_more": more,
        }
        last.response.body = orjson.dumps(body)
        return last
