"""Everything one request carries along the guard chain.

Each field is set by one stage and read by the stages after it; the comment on each slot says who
sets it. Data one guard hands to another is a field here, never a key in ``extras``, which holds
only a guard's private state between its own phases (see ``chain.Guard.needs``/``provides``).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from .config import Upstream
from .errors import KeygateError
from .routes import Route
from .types import IPAddress, KeyRecord, Team, Usage

Estimate = tuple[int, int, bool, str, int]
"""``(prompt, output, given, field, choices)``: estimated prompt tokens (images and files at their
worst case included), max output tokens in all (the cap times ``choices``), whether the body already
caps the output at that itself, the body field that caps it, and how many outputs the request asks
for (``n``, ``best_of``). A plain tuple: it is made for every limited request (see
guards/_estimate.py)."""

LimitHeaders = tuple[frozenset[str], list[tuple[str, str]]]
"""Headers keygate adds to the answer (its own ``x-ratelimit-*`` counts), and the upstream header
names they replace."""


class Context:
    """Everything one request carries along the chain. No globals, no hidden state."""

    __slots__ = (
        "answer",
        "body",
        "client_addr",
        "client_ip",
        "client_wants_usage",
        "error",
        "estimate",
        "extras",
        "first_chunk",
        "headers",
        "json",
        "json_changed",
        "key",
        "limit_headers",
        "method",
        "model",
        "path",
        "peer_ip",
        "proto",
        "query",
        "request_id",
        "route",
        "scope",
        "span",
        "started",
        "status",
        "stream",
        "team",
        "ts",
        "upstream",
        "upstream_ended",
        "upstream_started",
        "usage",
    )

    def __init__(
        self,
        request_id: str,
        method: str,
        path: str,
        query: str,
        headers: dict[str, str],
        peer_ip: str,
        proto: Any = None,
    ) -> None:
        # Set by the app before the chain runs.
        self.request_id = request_id
        self.ts = time.time()
        self.started = time.perf_counter()
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers  # lower-cased names
        self.peer_ip = peer_ip
        self.proto = proto
        self.scope: Any = None  # the app: granian's RSGI scope (the connection's addresses)
        self.route: Route | None = None
        # client_ip guard: the resolved client (the socket peer unless a trusted proxy said otherwise)
        self.client_ip = peer_ip
        self.client_addr: IPAddress | None = None
        # authentication guard: who is asking
        self.key: KeyRecord | None = None
        self.team: Team | None = None
        # body guard: the request as read and checked
        self.body = b""
        self.json: dict[str, Any] | None = None
        # set_json changed ``json`` since ``body`` was written: ``upstream_body`` serialises again
        self.json_changed = False
        self.model: str | None = None
        self.stream = False
        # metering (asked by the body guard): False when keygate asked for the usage chunk itself
        self.client_wants_usage = True
        # the first limit guard that needs it: the request's worst case in tokens
        self.estimate: Estimate | None = None
        # rate-limit guard: headers for the answer, whatever it turns out to be
        self.limit_headers: LimitHeaders | None = None
        # forwarding: where it went; the answer: status, usage (metering), error
        self.upstream: Upstream | None = None
        self.status = 0
        self.usage = Usage()
        # the app, on routes of stored objects (Route.kind): the whole answer's body, for the
        # ownership guard (guards/objects.py) to read the ids it creates
        self.answer: bytes | None = None
        self.error: KeygateError | None = None
        # forwarding and the relay (perf_counter, 0.0 until it happens), for the metrics: the first
        # upstream attempt sent, the upstream's answer read to its end, a stream's first piece
        self.upstream_started = self.upstream_ended = self.first_chunk = 0.0
        self.span: Any = None  # tracing (tracing.py): the request's span, None while tracing is off
        self.extras: dict[str, Any] = {}  # a guard's private state between its own phases

    @property
    def latency_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000.0

    def set_json(self, name: str, value: Any) -> None:
        """Set a top-level field of the JSON body keygate forwards.

        A field the body does not have yet (the usual case: an output cap, the usage option) is
        written in front of the body as it stands, which is ``json`` serialised (the body guard
        wrote it so), so ``body`` stays in step without a copy of the whole body through the
        serialiser. Otherwise ``body`` is serialised again once, by :meth:`upstream_body`, however
        many fields the guards changed; until then it differs only in fields keygate set itself.
        ``name`` is one of keygate's own ASCII field names.
        """
        data = self.json
        assert data is not None
        body = self.body
        if not self.json_changed and data and name not in data and body[:1] == b"{":
            # (data is not empty, so neither is the object in body: a comma follows the new field)
            self.body = b'{"' + name.encode() + b'":' + orjson.dumps(value) + b"," + body[1:]
        else:
            self.json_changed = True
        data[name] = value

    def upstream_body(self) -> bytes:
        """The body to send upstream: ``json`` serialised when a guard changed it."""
        if self.json_changed and self.json is not None:
            self.body = orjson.dumps(self.json)
            self.json_changed = False
        return self.body
