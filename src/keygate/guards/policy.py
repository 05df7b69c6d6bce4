"""Per-key and per-team access policy: expiry, networks, routes, models and per-request caps.

Policies are plain JSON in ``KeyRecord.policy`` and ``Team.policy`` (written by
``keygate keys/teams create/update``, see :mod:`keygate.cli.access_policy`):

================== ========================== ==================================================
field              example                    effect
================== ========================== ==================================================
expires_at         "2027-01-31T00:00:00Z"     afterwards 401 ``expired_api_key`` (any time
                                              ``times.instant`` reads; one it cannot read
                                              counts as passed)
allow_ips          ["10.0.0.0/8", "::1/128"]  from any other client IP 403 ``ip_not_allowed``
routes             ["embeddings"]             other routes 403 ``route_not_allowed``
models             ["gpt-4o*", "o3"]          other models 403 ``model_not_allowed`` (names it);
                                              a request that names no model 403
                                              ``model_not_allowed`` too (see :func:`names_model`)
max_body_bytes     65536                      larger bodies 413
max_output_tokens  256                        max_tokens / max_completion_tokens /
                                              max_output_tokens are clamped to it (and set to it
                                              when the request gave none)
================== ========================== ==================================================

Both the key's and its team's policy are applied, each in full, so the stricter one wins.
:class:`AccessPolicy` runs before the body is read (a forbidden route or network costs no
upload); :class:`RequestPolicy` runs after it (model and caps need the body).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import time
from functools import lru_cache
from typing import Any

from ..chain import Guard
from ..context import Context
from ..errors import AuthenticationFailed, KeygateError, PayloadTooLarge, PermissionDenied
from ..routes import OUTPUT_TOKEN_FIELDS, Route
from ..times import expired
from .client_ip import in_networks

EXPIRED = AuthenticationFailed("This API key has expired.", code="expired_api_key")
IP_DENIED = PermissionDenied("This key may not be used from your network.", code="ip_not_allowed")


def policies(ctx: Context) -> tuple[dict[str, Any], ...]:
    """The key's policy, then its team's (each only when non-empty); () for neither, which the
    guards check first (a key without rules pays for nothing more)."""
    key, team = ctx.key, ctx.team
    mine = key.policy if key is not None else None
    theirs = team.policy if team is not None else None
    if mine:
        return (mine, theirs) if theirs else (mine,)
    return (theirs,) if theirs else ()


@lru_cache(maxsize=4096)
def _networks(cidrs: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def model_allowed(model: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(model, p) for p in patterns)


def names_model(route: Route | None) -> bool:
    """Whether a request on ``route`` uses a model, so that a model allowlist needs one named.

    Every route with a body does (where the body names none, OpenAI picks a default model, which
    the allowlist has not allowed); the routes without one (listing models, a stored response and
    its actions, such as ``POST /v1/responses/{id}/cancel``) do not, nor do the routes managing
    stored objects, where no model runs (``Route.uses_model``: files, batches, vector stores...)."""
    return route is not None and route.body != "none" and route.uses_model


NO_MODEL = PermissionDenied(
    "This key may only use the models it allows; the request names no model.",
    code="model_not_allowed",
    param="model",
)


class AccessPolicy(Guard):
    """Expiry, client networks and routes: everything that needs no body."""

    name = "policy"
    needs = frozenset({"key", "team", "client_addr"})

    def request(self, ctx: Context) -> KeygateError | None:
        found = policies(ctx)
        if not found:
            return None
        now = time.time()
        for policy in found:
            expires = policy.get("expires_at")
            if expires is not None and expired(expires, now):
                return EXPIRED
            allow_ips = policy.get("allow_ips")
            if allow_ips:
                addr = ctx.client_addr
                if addr is None or not in_networks(addr, _networks(tuple(allow_ips))):
                    return IP_DENIED
            routes = policy.get("routes")
            if routes and (ctx.route is None or ctx.route.name not in routes):
                name = ctx.route.name if ctx.route is not None else "-"
                return PermissionDenied(
                    f"This key may not use the {name} endpoint.", code="route_not_allowed"
                )
            cap = policy.get("max_body_bytes")
            declared = ctx.headers.get("content-length", "")
            if isinstance(cap, int) and declared.isascii() and declared.isdigit() and int(declared) > cap:
                return PayloadTooLarge(f"Request body is larger than this key's {cap} byte limit.")
        return None


class RequestPolicy(Guard):
    """Body size, model and output-token caps: needs the body the BodyReader read."""

    name = "request_policy"
    needs = frozenset({"key", "team", "body", "json", "model"})

    def request(self, ctx: Context) -> KeygateError | None:
        found = policies(ctx)
        if not found:
            return None
        token_cap: int | None = None
        for policy in found:
            cap = policy.get("max_body_bytes")
            if isinstance(cap, int) and len(ctx.body) > cap:
                return PayloadTooLarge(f"Request body is larger than this key's {cap} byte limit.")
            models = policy.get("models")
            if not models:
                pass
            elif ctx.model is None:
                if names_model(ctx.route):
                    return NO_MODEL
            elif not model_allowed(ctx.model, models):
                return PermissionDenied(
                    f"This key may not use the model '{ctx.model[:200]}'.",
                    code="model_not_allowed",
                    param="model",
                )
            tokens = policy.get("max_output_tokens")
            if isinstance(tokens, int):
                token_cap = tokens if token_cap is None else min(token_cap, tokens)
        if token_cap is not None and ctx.json is not None:
            self._clamp(ctx, token_cap)
        return None

    @staticmethod
    def _clamp(ctx: Context, cap: int) -> None:
        data = ctx.json
        assert data is not None
        changed = False
        present = [f for f in OUTPUT_TOKEN_FIELDS if f in data]
        for f in present:
            value = data[f]
            if not isinstance(value, int) or isinstance(value, bool) or value > cap:
                data[f] = cap
                changed = True
        if changed:
            ctx.json_changed = True  # serialised once, before forwarding (Context.upstream_body)
        fields = ctx.route.output_fields if ctx.route is not None else ()
        if not present and fields:
            ctx.set_json(fields[0], cap)
