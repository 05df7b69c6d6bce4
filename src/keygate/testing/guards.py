"""Run one guard on one request, in process, without a server.

    ctx = context("POST", "/v1/chat/completions", json={"model": "gpt-4o", "messages": []},
                  key=KeyRecord(...))
    err = await run_request(RequestPolicy(), ctx)
    assert err is None and ctx.json["max_completion_tokens"] == 256

:func:`context` makes the :class:`~keygate.context.Context` the app would (route matched, headers
lower-cased, the body read as the body guard would set it when ``json`` is given);
:func:`run_request` runs a guard's request phase, plain or awaiting; :func:`run_complete` its
complete phase.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import orjson

from .. import routes
from ..chain import Guard
from ..context import Context
from ..errors import KeygateError
from ..types import KeyRecord, Team

__all__ = ["context", "key_record", "run_complete", "run_request"]


class _Body:
    """Stands in for the RSGI protocol object: ``await proto()`` and ``async for`` give the body."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    async def __call__(self) -> bytes:
        return self._body

    def __aiter__(self) -> Any:
        return self._chunks()

    async def _chunks(self) -> Any:
        if self._body:
            yield self._body


def context(
    method: str = "POST",
    path: str = "/v1/chat/completions",
    *,
    json: Mapping[str, Any] | None = None,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    peer: str = "127.0.0.1",
    key: KeyRecord | None = None,
    team: Team | None = None,
    parsed: bool = True,
) -> Context:
    """A request as the chain sees it. With ``json`` and ``parsed``, the body is set as the body
    guard would set it (``body``, ``json``, ``model``, ``stream``); with ``parsed=False`` only the
    raw body is there to be read (for the body guard itself)."""
    raw = body if body is not None else (orjson.dumps(dict(json)) if json is not None else b"")
    head = {k.lower(): v for k, v in (headers or {}).items()}
    if raw and "content-type" not in head:
        head["content-type"] = "application/json"
    if raw and "content-length" not in head:
        head["content-length"] = str(len(raw))
    ctx = Context("test-1", method, path, "", head, peer, _Body(raw))
    ctx.route = routes.match(method, path)
    ctx.key, ctx.team = key, team
    if parsed and json is not None:
        ctx.body = raw
        ctx.json = dict(json)
        model = ctx.json.get("model")
        ctx.model = model if isinstance(model, str) else None
        ctx.stream = bool(ctx.route and ctx.route.streams and ctx.json.get("stream") is True)
    return ctx


def key_record(key_id: str = "key_test", policy: Mapping[str, Any] | None = None, **fields: Any) -> KeyRecord:
    """A key record for guard tests (no secret involved: the hash is a placeholder)."""
    values: dict[str, Any] = {"name": key_id, "key_hash": "0" * 64, "hint": "kg_...test", "created_at": 0.0}
    values.update(fields)
    return KeyRecord(id=key_id, policy=dict(policy or {}), **values)


async def run_request(guard: Guard, ctx: Context) -> KeygateError | None:
    """The guard's request phase on ``ctx``: the error it rejects with, or None."""
    found = guard.request(ctx)
    if inspect.isawaitable(found):
        found = await found
    assert found is None or isinstance(found, KeygateError)
    return found


def run_complete(guard: Guard, ctx: Context) -> None:
    guard.complete(ctx)
