"""A minimal pipelined Redis client for the counters' hot path: one connection, replies in order.

Measured on this project's 2-core machine, redis-py's asyncio client cost 145-180 us of process
CPU per EVALSHA (command packing in Python, a pooled connection per command, a timeout task per
read), more than the whole rest of a request. This client keeps one connection per gateway,
writes every command as soon as it is made (concurrent requests share the connection: their
commands go out back to back and their replies come back in the same order), packs with
``hiredis.pack_command`` and parses with ``hiredis.Reader`` (both C), and arms one timer per
call. It speaks only what the counters need: AUTH and SELECT on connecting, TLS for
``rediss://``, commands and their replies; pub/sub stays with redis-py (not on the request path).

A call that fails because the connection is gone (Redis restarted, the network broke) is sent
once more on a new connection; one that times out closes the connection (the replies would no
longer match the calls) and raises.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Sequence
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import hiredis

ReplyError = hiredis.ReplyError


class RespConnectionError(ConnectionError):
    """The connection is gone, or Redis did not answer in time."""


class RespTimeout(RespConnectionError):
    """Redis did not answer in time (not sent again: a hung server would double the wait)."""


RETRY_CONNECT = 0.5  # seconds after a failed connect during which calls fail at once


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader(encoding="utf-8")
        self.waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.out: list[bytes] = []  # commands of this event-loop turn, written together at its end
        self.writes = 0  # (for measuring: writes made, each answered by the replies it asked for)

    def write_soon(self, data: bytes) -> None:
        """Queue ``data``; everything queued in this turn of the event loop goes out in one write
        (so concurrent requests' commands share a system call, and their replies a read)."""
        if not self.out:
            asyncio.get_running_loop().call_soon(self.flush)
        self.out.append(data)

    def flush(self) -> None:
        out, self.out = self.out, []
        if self.transport is not None and not self.closed and out:
            self.transport.write(b"".join(out))
            self.writes += 1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's TCPTransport is one without subclassing asyncio.Transport).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiting = self.waiting
        while (reply := self.reader.gets()) is not False:
            if not waiting:
                break  # (a reply nobody waits for: the connection is being dropped)
            fut = waiting.popleft()
            if not fut.done():
                fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        while self.waiting:
            fut = self.waiting.popleft()
            if not fut.done():
                fut.set_exception(RespConnectionError("redis connection lost"))

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class RespClient:
    def __init__(self, url: str, password: str | None, timeout: float) -> None:
        parts = urlsplit(url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 6379
        self._username = unquote(parts.username) if parts.username else None
        self._password = password
        path = parts.path.strip("/")
        self._db = int(path) if path else 0
        self._ssl = ssl.create_default_context() if parts.scheme == "rediss" else None
        self._timeout = timeout
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None
        self._down_until = 0.0  # (loop time) a connect failed: fail at once until then

    async def _connection(self) -> _Protocol:
        proto = self._proto
        if proto is not None and not proto.closed:
            return proto
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            proto = self._proto
            if proto is not None and not proto.closed:
                return proto
            loop = asyncio.get_running_loop()
            if loop.time() < self._down_until:
                # Callers queued behind a failed connect do not each wait for their own timeout.
                raise RespConnectionError("cannot connect to redis (retrying shortly)")
            hostname = self._host if self._ssl else None
            try:
                _, made = await asyncio.wait_for(
                    loop.create_connection(
                        _Protocol, self._host, self._port, ssl=self._ssl, server_hostname=hostname
                    ),
                    self._timeout,
                )
            except (OSError, TimeoutError) as exc:
                self._down_until = loop.time() + RETRY_CONNECT
                raise RespConnectionError(f"cannot connect to redis: {type(exc).__name__}") from None
            hello: list[tuple[Any, ...]] = []
            if self._password is not None:
                user = (self._username,) if self._username else ()
                hello.append(("AUTH", *user, self._password))
            if self._db:
                hello.append(("SELECT", self._db))
            if hello:
                for reply in await self._send(made, hello):
                    if isinstance(reply, ReplyError):
                        made.close()
                        raise RespConnectionError(f"redis refused the connection: {str(reply).split(' ')[0]}")
            self._proto = made
            return made

    async def _send(self, proto: _Protocol, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        loop = asyncio.get_running_loop()
        futs = [loop.create_future() for _ in commands]
        proto.waiting.extend(futs)
        proto.write_soon(b"".join([hiredis.pack_command(c) for c in commands]))
        last = futs[-1]
        timer = loop.call_later(self._timeout, _expire, proto, last)
        try:
            await last  # replies arrive in order: once the last is in, all are
        finally:
            timer.cancel()
        return [f.result() for f in futs]

    async def pipeline(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Each command's reply, in order; an error reply is a :data:`ReplyError` in the list."""
        try:
            return await self._send(await self._connection(), commands)
        except RespTimeout:
            raise
        except RespConnectionError:
            # A connection found dead (Redis restarted): once more on a new one. (A connection that
            # broke after Redis ran the commands runs them twice: docs/redis.md.)
            return await self._send(await self._connection(), commands)

    async def call(self, *args: Any) -> Any:
        """One command's reply; an error reply is raised."""
        reply = (await self.pipeline([args]))[0]
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    @property
    def writes(self) -> int:
        """Writes sent on the current connection (for measuring round trips)."""
        return self._proto.writes if self._proto is not None else 0

    def close(self) -> None:
        if self._proto is not None:
            self._proto.close()
            self._proto = None


def _expire(proto: _Protocol, fut: asyncio.Future[Any]) -> None:
    """No answer in time: the replies still due would answer the wrong calls, so drop the line."""
    if fut.done():
        return
    while proto.waiting:
        waiting = proto.waiting.popleft()
        if not waiting.done():
            waiting.set_exception(RespTimeout("redis did not answer in time"))
    proto.close()
