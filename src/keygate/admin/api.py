"""The admin API: a Starlette app on its own listener, never on the public one.

Every route but ``/healthz``, ``/readyz`` (:mod:`keygate.admin.readiness`) and ``/metrics`` from
a network of ``metrics.scrape_without_token_from`` needs ``Authorization: Bearer kga_...`` with a
role allowed to do what the route does (see :mod:`keygate.admin.tokens`). Store work runs in a
worker thread, so the data plane sharing this event loop is never blocked by an admin write. Every error, also
404 and 405 from routing, is OpenAI's error JSON. Input is checked before anything is stored
(:mod:`keygate.ops.validate`, :mod:`keygate.ops.policy`): no non-finite or out-of-range number,
no control character in a name. A non-finite number that an older version stored is answered as
null, so one such row never breaks a list for everyone.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..alerts import Alerter
from ..config import Settings
from ..errors import (
    AuthenticationFailed,
    InvalidRequest,
    KeygateError,
    NotFound,
    PermissionDenied,
    error_body,
    error_headers,
)
from ..events import Burst
from ..metrics import Metrics
from ..ops import anomalies, audit_log, keys, objects, teams, tokens, usage
from ..ops.audit import Actor
from ..ops.views import key_view
from ..store import AdminToken, Store
from .openapi import openapi_document
from .readiness import Check, readyz

log = logging.getLogger("keygate.admin")

MAX_BODY = 1024 * 1024
GET = ["GET"]
_LIMIT = re.compile(r"^[0-9]{1,6}$")


def _missing() -> AuthenticationFailed:
    # A fresh error each time: a raised module-level instance would keep every traceback alive.
    return AuthenticationFailed(
        "Missing admin token. Send it as 'Authorization: Bearer kga_...'.", code="missing_admin_token"
    )


def _invalid() -> AuthenticationFailed:
    return AuthenticationFailed("Invalid or revoked admin token.", code="invalid_admin_token")


Operation = Callable[["Call"], Any]


class Call:
    """One authorised admin request, as the operation sees it."""

    __slots__ = ("actor", "body", "params", "query", "token")

    def __init__(self, token: AdminToken, origin: str, request: Request, body: Any) -> None:
        self.token = token
        self.actor = Actor(token.id, origin)
        self.params: dict[str, str] = dict(request.path_params)
        self.query = request.query_params
        self.body = body


def error_response(err: KeygateError) -> Response:
    return Response(error_body(err), err.status, headers=dict(error_headers(err)))


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise InvalidRequest("request body too large")
    if not raw.strip():
        raise InvalidRequest("a JSON request body is required")
    try:
        value = json.loads(raw, parse_constant=_reject_constant)
        # Lone surrogates (valid JSON escapes, invalid text) could not be stored: refuse them here.
        json.dumps(value, ensure_ascii=False).encode()
    except (ValueError, RecursionError):
        raise InvalidRequest("the request body is not valid JSON") from None
    return value


def _finite(value: Any) -> Any:
    """``value`` with each non-finite number as null, so that it can be answered as JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _check_query(request: Request, allowed: tuple[str, ...]) -> None:
    """Unknown or repeated query parameters are an error, not silently ignored."""
    seen: set[str] = set()
    for name, _ in request.query_params.multi_items():
        if name not in allowed or name in seen:
            raise InvalidRequest(f"unexpected query parameter {name[:50]!r}", param=name[:50])
        seen.add(name)


def _bearer(request: Request) -> str | None:
    value = request.headers.get("authorization", "")
    if value[:7].lower() != "bearer ":
        return None
    return value[7:].strip() or None


class AdminAPI:
    """Builds the Starlette app; holds the settings and store it serves from."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        alerter: Alerter | None = None,
        checks: Sequence[Check] = (),
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.alerter = alerter  # the gateway's, for audit_verify_failed and admin_auth_failures
        audit = settings.audit
        self._failures = Burst(audit.admin_auth_failures, audit.admin_auth_failures_window)
        self.checks: list[Check] = [("store", store.ping), *checks]
        self.metrics = metrics

    def _authenticate(self, presented: str | None, origin: str, permission: str, path: str) -> AdminToken:
        if presented is None:
            raise _missing()
        token = tokens.authenticate(self.store, self.settings.pepper, presented)
        if token is None:
            log.warning("admin authentication failed", extra={"origin": origin, "path": path[:200]})
            if self._failures.hit(origin):  # a burst from one address: audited and alerted once
                self._auth_failures(origin, path)
            raise _invalid()
        if not tokens.allowed(token.role, permission):
            actor = Actor(token.id, origin)
            self.store.write_audit(actor.record("denied", path[:200], role=token.role, needs=permission))
            raise PermissionDenied(f"The {token.role} role may not do this (needs {permission}).")
        return token

    def _auth_failures(self, origin: str, path: str) -> None:
        s = self.settings.audit
        details = {"failures": s.admin_auth_failures, "window_s": s.admin_auth_failures_window}
        self.store.write_audit(
            Actor("client", origin).record("security.admin_auth_failures", origin, path=path[:200], **details)
        )
        if self.alerter is not None:
            self.alerter.emit("admin_auth_failures", target=origin, client_ip=origin, **details)

    def endpoint(
        self,
        permission: str,
        op: Operation,
        *,
        status: int = 200,
        body: bool = False,
        query: tuple[str, ...] = (),
    ) -> Callable[[Request], Awaitable[Response]]:
        async def handle(request: Request) -> Response:
            origin = request.client.host if request.client else "unknown"
            try:
                token = await run_in_threadpool(
                    self._authenticate, _bearer(request), origin, permission, request.url.path
                )
                _check_query(request, query)
                payload = await _json_body(request) if body else None
                result = await run_in_threadpool(op, Call(token, origin, request, payload))
            except KeygateError as err:
                return error_response(err)
            try:
                return JSONResponse(result, status)
            except ValueError:  # a row stored by an older version, which took 1e999 (infinity)
                return JSONResponse(_finite(result), status)

        return handle

    async def scrape(self, request: Request) -> Response:
        """``GET /metrics``: a token allowed ``metrics:read`` (the metrics or admin role), unless the
        client's address is in ``metrics.scrape_without_token_from``. The exposition runs on the
        event loop: the gauges read parts the data plane owns (see keygate.metrics)."""
        assert self.metrics is not None
        origin = request.client.host if request.client else "unknown"
        try:
            if not _in(origin, self.settings.metrics.scrape_without_token_from):
                await run_in_threadpool(
                    self._authenticate, _bearer(request), origin, "metrics:read", request.url.path
                )
            _check_query(request, ())
        except KeygateError as err:
            return error_response(err)
        return Response(await self.metrics.exposition(), 200, media_type=CONTENT_TYPE_PLAIN_0_0_4)

    # -- operations (run in a worker thread) ---------------------------------------------------

    def _limit(self, call: Call, most: int = 1000) -> int:
        raw = call.query.get("limit", "100")
        if not _LIMIT.fullmatch(raw) or int(raw) > most:  # (`$` alone also matches before a trailing newline)
            raise InvalidRequest(f"limit must be an integer from 1 to {most}", param="limit")
        return int(raw)

    def _verify_audit(self, call: Call) -> dict[str, Any]:
        alerter = self.alerter

        def alert(found: Any) -> None:
            if alerter is not None:
                alerter.emit(
                    "audit_verify_failed",
                    problem=found["problem"],
                    seq=found["seq"],
                    message=found["message"],
                    by=call.actor.id,
                )

        return audit_log.verify(self.settings, self.store, call.query.get("anchor"), on_failure=alert)

    def routes(self) -> list[Route]:
        return _one_route_per_path(self._routes())

    def _routes(self) -> list[Route]:
        s, settings, ep = self.store, self.settings, self.endpoint
        pepper = settings.pepper

        def key_id(c: Call) -> str:
            return c.params["key_id"]

        scrape = [Route("/metrics", self.scrape, methods=GET)] if self.metrics is not None else []
        return [
            *scrape,
            Route("/healthz", healthz, methods=GET),
            Route("/readyz", readyz(self.checks), methods=GET),
            Route("/openapi.json", ep("keys:read", lambda c: openapi_document()), methods=GET),
            Route("/admin/keys", ep("keys:read", lambda c: keys.list_views(s)), methods=GET),
            Route(
                "/admin/keys",
                ep("keys:write", lambda c: keys.create(s, settings, c.actor, c.body), status=201, body=True),
                methods=["POST"],
            ),
            Route(
                "/admin/keys/{key_id}",
                ep("keys:read", lambda c: key_view(keys.get(s, key_id(c)))),
                methods=GET,
            ),
            Route(
                "/admin/keys/{key_id}",
                ep("keys:write", lambda c: keys.update(s, settings, c.actor, key_id(c), c.body), body=True),
                methods=["PATCH"],
            ),
            Route(
                "/admin/keys/{key_id}/revoke",
                ep("keys:write", lambda c: keys.revoke(s, c.actor, key_id(c))[0]),
                methods=["POST"],
            ),
            Route(
                "/admin/keys/{key_id}/release",
                ep("keys:write", lambda c: anomalies.release(s, c.actor, key_id(c))),
                methods=["POST"],
            ),
            Route(
                "/admin/anomalies",
                ep(
                    "keys:read",
                    lambda c: anomalies.list_events(
                        s, c.query.get("key"), c.query.get("since"), self._limit(c)
                    ),
                    query=("key", "since", "limit"),
                ),
                methods=GET,
            ),
            Route(
                "/admin/anomalies/{event_id}/ack",
                ep("keys:write", lambda c: anomalies.ack(s, c.actor, c.params["event_id"])),
                methods=["POST"],
            ),
            Route("/admin/teams", ep("teams:read", lambda c: teams.list_views(s)), methods=GET),
            Route(
                "/admin/teams",
                ep("teams:write", lambda c: teams.create(s, c.actor, c.body), status=201, body=True),
                methods=["POST"],
            ),
            Route(
                "/admin/teams/{team}",
                ep("teams:read", lambda c: teams.view(s, c.params["team"])),
                methods=GET,
            ),
            Route(
                "/admin/teams/{team}",
                ep(
                    "teams:write",
                    lambda c: teams.update(s, c.actor, c.params["team"], c.body),
                    body=True,
                ),
                methods=["PATCH"],
            ),
            Route(
                "/admin/usage",
                ep("usage:read", lambda c: usage.usage(s, c.query.get("key")), query=("key",)),
                methods=GET,
            ),
            Route(
                "/admin/audit",
                ep(
                    "audit:read",
                    lambda c: audit_log.entries(
                        s,
                        self._limit(c),
                        c.query.get("action"),
                        c.query.get("actor"),
                        c.query.get("since"),
                    ),
                    query=("limit", "action", "actor", "since"),
                ),
                methods=GET,
            ),
            Route(
                "/admin/audit/verify",
                ep("audit:read", self._verify_audit, query=("anchor",)),
                methods=GET,
            ),
            Route("/admin/audit/anchor", ep("audit:read", lambda c: audit_log.anchor(s)), methods=GET),
            Route(
                "/admin/objects",
                ep(
                    "objects:read",
                    lambda c: objects.list_views(s, c.query.get("key"), c.query.get("kind"), self._limit(c)),
                    query=("key", "kind", "limit"),
                ),
                methods=GET,
            ),
            Route(
                "/admin/objects/{object_id}/assign",
                ep(
                    "objects:write",
                    lambda c: objects.assign(s, c.actor, c.params["object_id"], c.body),
                    body=True,
                ),
                methods=["POST"],
            ),
            Route(
                "/admin/objects/{object_id}/unassign",
                ep("objects:write", lambda c: objects.unassign(s, c.actor, c.params["object_id"])),
                methods=["POST"],
            ),
            Route("/admin/tokens", ep("tokens:read", lambda c: tokens.list_views(s)), methods=GET),
            Route(
                "/admin/tokens",
                ep(
                    "tokens:write", lambda c: tokens.create(s, pepper, c.actor, c.body), status=201, body=True
                ),
                methods=["POST"],
            ),
            Route(
                "/admin/tokens/{token_id}/revoke",
                ep("tokens:write", lambda c: tokens.revoke(s, c.actor, c.params["token_id"])[0]),
                methods=["POST"],
            ),
        ]

    def app(self) -> Starlette:
        return Starlette(
            routes=self.routes(),
            exception_handlers={HTTPException: _http_error, Exception: _server_error},
        )


def _one_route_per_path(routes: list[Route]) -> list[Route]:
    """Merge same-path routes, so a 405 names every method the path allows in ``Allow``."""
    by_path: dict[str, dict[str, Callable[[Request], Awaitable[Response]]]] = {}
    for route in routes:
        for method in route.methods or ():
            by_path.setdefault(route.path, {})[method] = route.endpoint
    merged = []
    for path, handlers in by_path.items():

        async def dispatch(request: Request, handlers: dict[str, Any] = handlers) -> Response:
            response: Response = await handlers[request.method](request)
            return response

        merged.append(Route(path, dispatch, methods=list(handlers)))
    return merged


def _in(origin: str, networks: tuple[Any, ...]) -> bool:
    if not networks:
        return False
    try:
        address = ipaddress.ip_address(origin)
    except ValueError:
        return False
    return any(address in net for net in networks)


async def healthz(request: Request) -> Response:
    """Liveness only: no data, no version, so it is safe without a token (see docs/admin-api.md)."""
    return JSONResponse({"status": "ok"})


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(NotFound("Not found: no such admin API route."))
    err = InvalidRequest("Method not allowed.", code="method_not_allowed")
    response = error_response(err)
    response.status_code = exc.status_code
    for k, v in (exc.headers or {}).items():
        response.headers[k] = v
    return response


async def _server_error(request: Request, exc: Exception) -> Response:
    log.error("admin API internal error", exc_info=exc)
    return error_response(KeygateError("The admin API hit an internal error."))


def build_admin_app(
    settings: Settings,
    store: Store,
    *,
    alerter: Alerter | None = None,
    checks: Sequence[Check] = (),
    metrics: Metrics | None = None,
) -> Starlette:
    """The admin ASGI app for these settings and this store (``checks``: more for ``/readyz``;
    ``/metrics`` given ``metrics``)."""
    return AdminAPI(settings, store, alerter=alerter, checks=checks, metrics=metrics).app()
