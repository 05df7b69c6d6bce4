"""Stored OpenAI objects are isolated per client key (docs/objects.md).

One guard, :class:`StoredObjects`, after the body is read and the request policy applied:

- a route acting on one stored object (``Route.action`` "use" or "delete", ``Route.object_id``
  from the path) is forwarded only when the caller may see the object; otherwise 404 in OpenAI's
  shape, as if it did not exist, and the upstream is never contacted;
- every object the body names (``guards/_refs.py``) must be visible to the caller, or 404 naming
  the field; a batch is checked against the key's policy and held on its budgets
  (``guards/_batches.py``); an uploaded batch input file is summarised for that check;
- its complete phase records what a successful answer created (the answer's id becomes the
  caller's), ends the record of what was deleted, and settles a batch when its results are read.

One guard rather than one before the body and one after: every request pays for each guard's
phase call, and the by-id check needs nothing the body guard could save it from (a by-id route
with a body is bounded by the body limit like any other).

Who may see an object: the key record that created it (a rotated key is the same record); and, when
the owner's key or team policy says ``share_objects: team`` and neither says ``key``, every key of
the owner's team. An object keygate did not create belongs to no key until an operator assigns it.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import orjson

from ..chain import Guard
from ..context import Context
from ..counters import CountersUnavailable
from ..errors import InvalidRequest, KeygateError, NotFound
from ..keycache import KeyCache
from ..limitconf import LimitSettings
from ..multipart import STEP, FieldScanner, FormError, boundary_of
from ..ownership import Ownership
from ..routes import Route
from ..types import KeyRecord, Team
from ._batches import MAX_SUMMARISED, check_lines, results_usage, summarise
from ._refs import MARK, references
from .budget import AsyncBudgetGuard, BatchHold, BudgetGuardBase
from .policy import policies
from .shared_limits import UNAVAILABLE

_NOUNS = {
    "file": "file",
    "upload": "upload",
    "batch": "batch",
    "vector_store": "vector store",
    "conversation": "conversation",
    "response": "response",
    "chat_completion": "chat completion",
}
_MAYBE_STORED = frozenset({"response", "chat_completion"})
log = logging.getLogger("keygate.limits")
_TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})


def not_found(kind: str, param: str | None = None) -> NotFound:
    """OpenAI's 404 for an object that does not exist (or that the caller may not know of)."""
    noun = _NOUNS.get(kind, "object")
    if param is None:
        return NotFound(f"No such {noun}.", code="not_found")
    return NotFound(f"No such {noun} (named by '{param}').", code="object_not_found", param=param)


# The by-id refusals, made once (returned as values, never raised: errors.py).
_REFUSED: Final = {kind: not_found(kind) for kind in _NOUNS}


def sharing(owner: KeyRecord, team: Team | None) -> bool:
    """Whether the owner's objects are its team's: ``share_objects: team`` in the owner's key or
    team policy, and ``key`` (keep them to the key) in neither (the stricter wins)."""
    modes = (owner.policy.get("share_objects"), team.policy.get("share_objects") if team else None)
    return "team" in modes and "key" not in modes


class Visibility:
    """The ownership cache and the key records, answering "may this caller see that object"."""

    def __init__(self, book: Ownership, keys: KeyCache) -> None:
        self.book = book
        self.keys = keys

    def visible(self, ctx: Context, object_id: str, kind: str | None = None) -> bool:
        found = self.book.owner(object_id)
        key = ctx.key
        if found is None or key is None or (kind is not None and found[0] != kind):
            return False
        owner_id = found[1]
        if owner_id == key.id:
            return True
        team_id = key.team_id
        if team_id is None:
            return False
        owner = self.keys.by_id(owner_id)
        return owner is not None and owner.team_id == team_id and sharing(owner, ctx.team)


class StoredObjects(Guard):
    """The caller's objects only: on by-id routes and in bodies; batches under the key's policy and
    budgets; what successful answers create or delete is recorded."""

    name = "objects"
    needs = frozenset({"key", "team", "route", "body", "json", "stream"})

    def __init__(self, seen: Visibility, limits: LimitSettings, budget: BudgetGuardBase | None) -> None:
        if isinstance(budget, AsyncBudgetGuard) and not isinstance(self, SharedStoredObjects):
            raise TypeError("budgets on shared counters need SharedStoredObjects (stored_objects())")
        self._seen = seen
        self._book = seen.book
        self._limits = limits
        self._budget = budget

    async def start(self) -> None:
        await self._book.start()

    async def stop(self) -> None:
        await self._book.close()

    def request(self, ctx: Context) -> KeygateError | None:
        route = ctx.route
        assert route is not None
        if not route.kind:
            return None
        object_id = route.object_id
        if object_id and not self._seen.visible(ctx, object_id, route.kind):
            return _REFUSED.get(route.kind) or not_found(route.kind)
        data = ctx.json
        if data and route.references:
            body = ctx.body
            # (inlined: the usual body names nothing, and a call costs more than these tests)
            if MARK in body or "previous_response_id" in data or "conversation" in data:
                for param, kind, ref_id in references(body, data):
                    if not self._seen.visible(ctx, ref_id, kind):
                        return not_found(kind, param)
        if route.action != "create":
            return None
        kind = route.kind
        if kind in _MAYBE_STORED:
            if ctx.stream and _stored(route, data):
                ctx.extras["objects.stream"] = kind
        elif kind == "batch":
            return self._batch(ctx, data or {})
        elif kind == "file":
            return self._summarise_upload(ctx)
        return None

    def chunk(self, ctx: Context, data: bytes) -> KeygateError | None:
        pending = ctx.extras.get("objects.stream")
        if pending is None:
            return None
        # The first event of a stored stream names the object: the response (response.created) or
        # the chat completion (every chunk has its id).
        found = _first_id(data, pending)
        if found:
            del ctx.extras["objects.stream"]
            assert ctx.key is not None
            self._book.record(found, pending, ctx.key.id)
        return None

    def complete(self, ctx: Context) -> None:
        route = ctx.route
        if route is None or not route.kind or ctx.key is None:
            return
        if ctx.status >= 300 or ctx.answer is None:
            # a batch the upstream did not create (or that was never sent): its hold is released
            held = ctx.extras.pop("objects.release", None) if route.kind == "batch" else None
            if held is not None and self._budget is not None:
                self._budget.settle_batch(held, {})
            return
        action = route.action
        if action == "create" and route.kind in _MAYBE_STORED:
            body = ctx.json
            store = body.get("store") if body else None
            if store is not True and (store is False or route.kind == "chat_completion"):
                return  # not stored upstream (see _stored): nothing to read, nothing recorded
        if action == "delete":
            self._book.forget(route.object_id)
            return
        if action == "list":
            return
        if route.kind == "file" and route.upstream_path.endswith("/content"):
            self._settle(ctx, route, ctx.answer)
            return
        try:
            data: Any = orjson.loads(ctx.answer)
        except orjson.JSONDecodeError:
            return
        if type(data) is not dict:
            return
        if action == "create":
            self._created(ctx, route, data)
        elif route.kind == "batch":
            self._batch_seen(ctx, data)
        elif route.kind == "upload" and route.upstream_path.endswith("/complete"):
            file = data.get("file")
            if type(file) is dict and type(file.get("id")) is str:
                self._book.record(file["id"], "file", self._owner_of(route.object_id, ctx))

    def _owner_of(self, object_id: str, ctx: Context) -> str:
        found = self._book.owner(object_id)
        assert ctx.key is not None
        return found[1] if found is not None else ctx.key.id

    def _created(self, ctx: Context, route: Route, data: dict[str, Any]) -> None:
        object_id = data.get("id")
        if type(object_id) is not str:
            return
        if route.kind in ("response", "chat_completion") and not _stored(route, ctx.json):
            return
        assert ctx.key is not None
        meta = ctx.extras.pop("objects.meta", None)
        self._book.record(object_id, route.kind, ctx.key.id, meta)

    def _batch_seen(self, ctx: Context, data: dict[str, Any]) -> None:
        """A batch answer names its output and error files: they are the batch owner's."""
        batch_id = data.get("id")
        if type(batch_id) is not str:
            return
        owner = self._owner_of(batch_id, ctx)
        files = [data.get("output_file_id"), data.get("error_file_id")]
        for file_id in files:
            if type(file_id) is str and self._book.owner(file_id) is None:
                self._book.record(file_id, "file", owner, {"batch": batch_id})
        if data.get("status") in _TERMINAL and type(data.get("output_file_id")) is not str:
            self._settle_batch(batch_id, {})  # nothing to read: the hold is released

    def _settle(self, ctx: Context, route: Route, body: bytes) -> None:
        """A batch's output file read for the first time: its lines' usage is the request's
        usage (so it is recorded against the key), and settles the batch's hold."""
        batch_id = self._book.meta(route.object_id).get("batch")
        if type(batch_id) is not str or self._book.meta(batch_id).get("settled"):
            return
        used = results_usage(body)
        usage = ctx.usage
        usage.prompt_tokens = sum(u[0] for u in used.values())
        usage.completion_tokens = sum(u[1] for u in used.values())
        usage.cached_tokens = sum(u[2] for u in used.values())
        usage.reported = True
        self._settle_batch(batch_id, used)

    def _settle_batch(self, batch_id: str, used: dict[str, list[int]]) -> None:
        meta = self._book.meta(batch_id)
        if meta.get("settled"):
            return
        hold = meta.get("hold")
        if hold and self._budget is not None:
            self._budget.settle_batch(BatchHold.from_meta(hold), used)
        self._book.note(batch_id, {**meta, "settled": True})

    def _batch(self, ctx: Context, data: dict[str, Any]) -> KeygateError | None:
        file_id = data.get("input_file_id")
        if type(file_id) is not str:
            return InvalidRequest("A batch needs an input_file_id.", param="input_file_id")
        summary = self._book.meta(file_id).get("summary")
        found = policies(ctx)
        budgets = self._budget.budgets(ctx.key, ctx.team) if self._budget and ctx.key else []
        if summary is None:
            if budgets or any(p.get("models") or p.get("routes") for p in found):
                return InvalidRequest(
                    "This key's policy or budget applies to batches, and keygate has no summary of this "
                    "input file (upload it with POST /v1/files through keygate).",
                    code="batch_input_not_checked",
                    param="input_file_id",
                )
            return None
        err = check_lines(summary, found, data.get("endpoint"))
        if err is not None:
            return err
        if self._budget is None or not budgets:
            return None
        if isinstance(self._budget, AsyncBudgetGuard):  # held by SharedStoredObjects, awaited
            ctx.extras["objects.hold"] = (summary["models"], file_id)
            return None
        return _held(ctx, self._budget.hold_batch(ctx, summary["models"]), file_id)

    def _summarise_upload(self, ctx: Context) -> KeygateError | None:
        """An uploaded batch input file's lines, summarised for the batch's check. The parse runs
        on the event loop (linear, C-level multipart search, one orjson parse per line; a few ms
        per MiB), only for uploads whose body says ``batch`` at all."""
        body = ctx.body
        if b"batch" not in body:
            return None
        try:
            ctype = ctx.headers.get("content-type", "")
            scanner = FieldScanner(boundary_of(ctype), ("purpose",), len(body), "file", MAX_SUMMARISED)
            for start in range(0, len(body), STEP):
                scanner.feed(body[start : start + STEP])
            fields = scanner.close()
        except FormError as exc:
            return InvalidRequest(exc.message, code="invalid_multipart", param=exc.param)
        if fields.get("purpose") == "batch" and scanner.raw_value is not None:
            ctx.extras["objects.meta"] = {"summary": summarise(scanner.raw_value, self._limits)}
        return None


class SharedStoredObjects(StoredObjects):
    """:class:`StoredObjects` on counters shared by several instances: a batch's hold on its
    budgets is a round trip to Redis, so the request phase awaits (only a batch's creation waits;
    every other request pays one coroutine)."""

    def __init__(
        self, seen: Visibility, limits: LimitSettings, budget: AsyncBudgetGuard, on_failure: str = "closed"
    ) -> None:
        super().__init__(seen, limits, budget)
        self._shared = budget
        self._open = on_failure == "open"

    async def request(self, ctx: Context) -> KeygateError | None:  # type: ignore[override]
        err = StoredObjects.request(self, ctx)
        if err is not None:
            return err
        pending = ctx.extras.pop("objects.hold", None)
        if pending is None:
            return None
        models, file_id = pending
        try:
            held = await self._shared.hold_batch_shared(ctx, models, self._open)
        except CountersUnavailable:  # (on_counter_failure: closed, as for any limited request)
            log.error("shared counters unavailable: a batch under a budget refused (503)")
            return UNAVAILABLE
        return _held(ctx, held, file_id)


def stored_objects(
    seen: Visibility, limits: LimitSettings, budget: BudgetGuardBase | None, on_failure: str = "closed"
) -> StoredObjects:
    """The stored-objects guard for these budgets: the awaiting one when they are on shared
    counters (``on_failure``: ``on_counter_failure``, for a batch's hold)."""
    if isinstance(budget, AsyncBudgetGuard):
        return SharedStoredObjects(seen, limits, budget, on_failure)
    return StoredObjects(seen, limits, budget)


def _held(ctx: Context, held: BatchHold | KeygateError | None, file_id: str) -> KeygateError | None:
    """A batch's hold taken: kept with the batch's ownership record, and released in the complete
    phase should the upstream not create the batch."""
    if isinstance(held, KeygateError):
        return held
    if held is not None:
        ctx.extras["objects.meta"] = {"hold": held.to_meta(), "input": file_id}
        ctx.extras["objects.release"] = held
    return None


def _stored(route: Route, data: dict[str, Any] | None) -> bool:
    """Whether the upstream keeps what this request creates: a response unless ``store`` is false,
    a chat completion only when ``store`` is true."""
    store = data.get("store") if data else None
    return store is not False if route.kind == "response" else store is True


def _first_id(data: bytes, kind: str) -> str | None:
    """The object id in a stream's first events (``"id":"resp_..."`` / ``"id":"chatcmpl-..."``)."""
    mark = b'"id":"resp_' if kind == "response" else b'"id":"chatcmpl-'
    at = data.find(mark)
    if at < 0:
        return None
    start = at + 6
    end = data.find(b'"', start)
    if end < 0:
        return None
    try:
        return data[start:end].decode("ascii")
    except UnicodeDecodeError:
        return None
