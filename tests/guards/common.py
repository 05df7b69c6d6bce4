"""What several guard tests share: a webhook receiver on loopback, counters that only await (as a
networked store would), and a capture of one keygate logger."""

from __future__ import annotations

import asyncio
import io
import json
import threading
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import orjson

from keygate.chain import Guard
from keygate.context import Context
from keygate.counters import MemoryCounters, Rate, Refused, Taken
from keygate.errors import KeygateError
from keygate.testing import run_request

from ..helpers import logged

__all__ = ["logged"]  # used by the guard tests from here


class Hook:
    """A receiver on loopback: keeps what is POSTed to it (JSON bodies parsed into ``received``,
    every body raw in ``bodies``), answers ``status`` with ``reply``; a GET gets ``reply`` too."""

    def __init__(self, status: int = 204, reply: bytes = b"") -> None:
        self.received: list[dict[str, Any]] = []
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        self.gets = 0
        self.status = status
        self.reply = reply
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                self.send_response(hook.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(hook.reply)))
                self.end_headers()
                self.wfile.write(hook.reply)

            def do_GET(self) -> None:
                hook.gets += 1
                self._answer()

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                hook.headers.append(headers)
                hook.bodies.append(body)
                if headers.get("content-type", "").startswith("application/json"):
                    hook.received.append(json.loads(body))
                self._answer()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class AwaitingCounters:
    """In-process counters behind only the awaiting deciding methods, as a networked store offers."""

    def __init__(self) -> None:
        self.inner = MemoryCounters()

    async def take(
        self, rates: Sequence[Rate], costs: Sequence[float], now: float, gates: Sequence[tuple[str, int]] = ()
    ) -> Taken | Refused:
        await asyncio.sleep(0)  # a real round trip lets other requests run here
        return self.inner.take_now(rates, costs, now, gates)

    async def reserve(
        self, names: Sequence[str], limits: Sequence[float], amounts: Sequence[float]
    ) -> int | None:
        await asyncio.sleep(0)
        return self.inner.reserve_now(names, limits, amounts)

    async def available(self, names: Sequence[str]) -> list[tuple[float, float]]:
        await asyncio.sleep(0)
        return self.inner.available_now(names)

    def finish(self, gates: Sequence[str], rates: Sequence[Rate], delta: float, now: float) -> None:
        self.inner.finish(gates, rates, delta, now)

    def adjust(self, rate: Rate, delta: float, now: float) -> None:
        self.inner.adjust(rate, delta, now)

    def leave(self, names: Sequence[str]) -> None:
        self.inner.leave(names)

    def settle(self, name: str, held: float, spent: float) -> tuple[float, float]:
        return self.inner.settle(name, held, spent)

    def load(self, spent: Mapping[str, float]) -> None:
        self.inner.load(spent)

    async def snapshot(self, names: Sequence[str]) -> dict[str, tuple[float, float]]:
        return self.inner.snapshot_now(names)

    shared = False

    def fail(self, *args: Any, **kwargs: Any) -> bool:
        return self.inner.fail(*args, **kwargs)

    def locked(self, name: str) -> float:
        return self.inner.locked(name)


def decide(guard: Guard, ctx: Context) -> KeygateError | None:
    """The guard's request phase on ``ctx``, in an event loop of its own (for a plain test)."""
    return asyncio.run(run_request(guard, ctx))


def post_many(url: str, key: str, n: int, body: Mapping[str, Any]) -> list[httpx.Response]:
    """``n`` chat completions POSTed at once, each on its own connection."""

    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=n)
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
            headers = {"authorization": f"Bearer {key}"}
            return list(
                await asyncio.gather(
                    *(client.post("/chat/completions", json=dict(body), headers=headers) for _ in range(n))
                )
            )

    return asyncio.run(run())


CHAT: Mapping[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def post_chat(url: str, key: str, **headers: str) -> httpx.Response:
    """One chat completion POSTed with ``key`` as its bearer token, and any other headers."""
    return httpx.post(
        f"{url}/chat/completions", json=dict(CHAT), headers={"Authorization": f"Bearer {key}", **headers}
    )


# One batch input line (a chat request), and a JSONL file of such lines, for the batch tests.
CHAT_LINE = {
    "custom_id": "1",
    "method": "POST",
    "url": "/v1/chat/completions",
    "body": {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hello there"}],
        "max_tokens": 50,
    },
}


def jsonl(*lines: dict[str, Any]) -> io.BytesIO:
    return io.BytesIO(b"".join(orjson.dumps(line) + b"\n" for line in lines))
