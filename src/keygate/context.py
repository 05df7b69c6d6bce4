"""Everything one request carries along the guard chain.

Its own module, kept interpreted, although the chain and the limit guards are compiled
(keygate.native): most code reading a context is interpreted, and CPython reads the ``__slots__``
of an interpreted class faster than the attributes of a compiled one.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import orjson

from .errors import KeygateError
from .types import KeyRecord, Team, Usage

if TYPE_CHECKING:
    from .config import Upstream
    from .routes import Route


class Context:
    """Everything one request carries along the chain. No globals, no hidden state."""

    __slots__ = (
        "body",
        "client_ip",
        "client_wants_usage",
        "error",
        "extras",
        "headers",
        "json",
        "key",
        "method",
        "model",
        "path",
        "peer_ip",
        "proto",
        "query",
        "request_id",
        "route",
        "started",
        "status",
        "stream",
        "team",
        "ts",
        "upstream",
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
        self.request_id = request_id
        self.ts = time.time()
        self.started = time.perf_counter()
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers  # lower-cased names
        self.peer_ip = peer_ip
        self.client_ip = peer_ip
        self.proto = proto
        self.route: Route | None = None
        self.body = b""
        self.json: dict[str, Any] | None = None
        self.model: str | None = None
        self.stream = False
        self.client_wants_usage = True
        self.key: KeyRecord | None = None
        self.team: Team | None = None
        self.upstream: Upstream | None = None
        self.status = 0
        self.usage = Usage()
        self.error: KeygateError | None = None
        self.extras: dict[str, Any] = {}  # per-guard scratch space, keyed by guard name

    @property
    def latency_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000.0

    def set_json(self, name: str, value: Any) -> None:
        """Set a top-level field of the JSON body, keeping ``json`` and ``body`` in step.

        (Serialising the whole body again is cheaper with orjson than splicing the field into the
        raw bytes, measured up to 16 KiB bodies: orjson is close to a copy for plain strings.)
        """
        data = self.json
        assert data is not None
        data[name] = value
        self.body = orjson.dumps(data)
