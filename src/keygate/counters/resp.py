"""A minimal pipelined Redis client for the counters' hot path: one connection, replies in order.

Measured on this project's 2-core machine, redis-py's asyncio client cost 145-180 us of process
CPU per EVALSHA (command packing in Python, a pooled connection per command, a timeout task per
read), more than the whole rest of a request. This client keeps one connection per gateway and
writes every command as soon as it is made (concurrent requests share the connection: their
commands go out back to back, in one write per event-loop turn, and their replies come back in the
same order). It parses with ``hiredis.Reader`` (C); the counters pack their own commands
(``commands.py``), and a call on a live connection is one :meth:`_Protocol.send` and one future
awaited by :meth:`RespClient.request`, with no timer of its own: one watchdog per connection fails
every waiting call when Redis has answered nothing for ``timeout`` seconds (checked every quarter
of it).
It speaks only what the counters need: AUTH and SELECT on connecting, TLS for ``rediss://``,
commands and their replies; pub/sub stays with redis-py (not on the request path).

A call that fails because the connection is gone (Redis restarted, the network broke) is sent
once more on a new connection; one that times out closes the connection (the replies would no
longer match the calls) and raises.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, cast
from urllib.parse import unquote, urlsplit

import hiredis

ReplyError = hiredis.ReplyError


class RespConnectionError(ConnectionError):
    """The connection is gone, or Redis did not answer in time."""


class RespTimeout(RespConnectionError):
    """Redis did not answer in time (not sent again: a hung server would double the wait)."""


RETRY_CONNECT = 0.5  # seconds after a failed connect during which calls fail at once


class Waiter(Protocol):
    """What waits for one reply: an asyncio future, or an object that takes the reply itself."""

    def done(self) -> bool: ...

    def set_result(self, result: Any, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


class _Protocol(asyncio.Protocol):
    def __init__(self, timeout: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.reader = hiredis.Reader(encoding="utf-8")
        self.waiting: collections.deque[Waiter] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.out: list[bytes] = []  # commands of this event-loop turn, written together at its end
        self.writes = 0  # (for measuring: writes made, each answered by the replies it asked for)
        self.timeout = timeout
        self.progress = 0.0  # loop time of the last reply (or of a call made when none waited)
        self._watch: asyncio.TimerHandle | None = None

    def send(self, data: bytes, waiter: Waiter) -> None:
        """Send ``data`` (one packed command) and have ``waiter`` take its reply. Everything sent in
        one turn of the event loop goes out in one write at its end (so concurrent requests'
        commands share a system call, and their replies a read)."""
        if not self.waiting:
            self.progress = self.loop.time()
        self.waiting.append(waiter)
        if not self.out:
            self.loop.call_soon(self.flush)
        self.out.append(data)

    def flush(self) -> None:
        out, self.out = self.out, []
        if self.transport is not None and not self.closed and out:
            self.transport.write(b"".join(out))
            self.writes += 1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's TCPTransport is one without subclassing asyncio.Transport).
        self.transport = cast(asyncio.Transport, transport)
        self._watch = self.loop.call_later(self.timeout / 4, self._check)

    def _check(self) -> None:
        """A quarter of the timeout after the last check: has Redis left calls unanswered for longer
        than the timeout? (One timer for the connection, not one per call.)"""
        if self.closed:
            return
        if self.waiting and self.loop.time() - self.progress > self.timeout:
            self.fail(RespTimeout("redis did not answer in time"))
            return
        self._watch = self.loop.call_later(self.timeout / 4, self._check)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiting = self.waiting
        answered = False
        while (reply := self.reader.gets()) is not False:
            if not waiting:
                break  # (a reply nobody waits for: the connection is being dropped)
            waiter = waiting.popleft()
            if not waiter.done():
                waiter.set_result(reply)
            answered = True
        if answered:
            self.progress = self.loop.time()

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RespConnectionError("redis connection lost"))

    def fail(self, error: RespConnectionError) -> None:
        """Every call still waiting fails with ``error``, and the connection is dropped: once one
        reply is missing, the ones after it would answer the wrong calls."""
        self.closed = True
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_exception(error)
        if self.transport is not None:
            self.transport.close()

    def close(self) -> None:
        self.fail(RespConnectionError("redis connection closed"))


class RespClient:
    def __init__(self, url: str, password: str | None, timeout: float, ca_file: Path | None = None) -> None:
        parts = urlsplit(url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 6379
        self._username = unquote(parts.username) if parts.username else None
        self._password = password
        path = parts.path.strip("/")
        self._db = int(path) if path else 0
        # rediss://: TLS, the certificate and host name verified (against ca_file, else the system's CAs).
        tls = parts.scheme == "rediss"
        self._ssl = ssl.create_default_context(cafile=str(ca_file) if ca_file else None) if tls else None
        self._timeout = timeout
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None
        self._down_until = 0.0  # (loop time) a connect failed: fail at once until then

    async def connection(self) -> _Protocol:
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
                        lambda: _Protocol(self._timeout),
                        self._host,
                        self._port,
                        ssl=self._ssl,
                        server_hostname=hostname,
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
        futs = [proto.loop.create_future() for _ in commands]
        for command, fut in zip(commands, futs, strict=True):
            proto.send(hiredis.pack_command(command), fut)
        try:
            await futs[-1]  # replies arrive in order: once the last is in, all are
        except BaseException:
            for fut in futs:  # (all failed together: their errors are this one)
                if fut.done() and not fut.cancelled():
                    fut.exception()
            raise
        return [f.result() for f in futs]

    async def pipeline(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Each command's reply, in order; an error reply is a :data:`ReplyError` in the list."""
        try:
            return await self._send(await self.connection(), commands)
        except RespTimeout:
            raise
        except RespConnectionError:
            # A connection found dead (Redis restarted): once more on a new one. (A connection that
            # broke after Redis ran the commands runs them twice: docs/redis.md.)
            return await self._send(await self.connection(), commands)

    def connected(self) -> _Protocol | None:
        """The connection, when it is up; else None."""
        proto = self._proto
        return proto if proto is not None and not proto.closed else None

    async def request(self, data: bytes) -> Any:
        """One packed command's reply (an error reply is returned): on the live connection with
        one future and nothing else in between (the hot path's call per request), connecting first
        if need be, and once more on a new connection if this one was found dead."""
        proto = self.connected() or await self.connection()
        fut: asyncio.Future[Any] = proto.loop.create_future()
        proto.send(data, fut)
        try:
            return await fut
        except RespTimeout:
            raise
        except RespConnectionError:  # (as in pipeline)
            proto = await self.connection()
            fut = proto.loop.create_future()
            proto.send(data, fut)
            return await fut

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
