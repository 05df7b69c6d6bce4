"""The upstream HTTP/1.1 client: keep-alive connections that live on the event loop itself.

Why not a client library: measured on this project's benchmark (granian + a bare forwarder to
nginx), pyreqwest cost 113-116 µs of process CPU per request and aiohttp 173-184 µs; this client
costs 42-47 µs. pyreqwest does its I/O on its own Rust threads, so every request and response
crosses threads and the GIL twice; here the request is one ``transport.write`` and the response
arrives in ``data_received`` on the loop that is already running the request. Parsing is not done
by hand: ``httptools`` (llhttp, the parser of Node.js and uvicorn) frames every response, including
chunked bodies. What is left here is small: writing a request head, pooling connections, timeouts.

Rules it keeps:

- The connection's destination comes only from the configured upstream (:class:`Origin`); the
  request target is built by the caller from the configured base path and an allowlisted route.
- A header name, value or target carrying CR, LF or NUL is refused before anything is written.
- TLS verifies the certificate chain and host name (system roots, or the upstream's own CA bundle).
- A connection goes back to the pool only after a complete response the server did not ask to
  close; anything else (timeout, error, a client that left mid-stream) closes it at once.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import httptools

MAX_HEADER_BYTES = 64 * 1024
MAX_IDLE_PER_ORIGIN = 256
# A streamed response stops reading from the socket while this much is queued for a slow client.
STREAM_HIGH_WATER = 256 * 1024


class TransportError(Exception):
    """The upstream connection failed; the message is safe to log (it never holds a secret)."""


class ConnectFailed(TransportError):
    pass


class ConnectTimeout(TransportError):
    pass


class ResponseTimeout(TransportError):
    pass


class InvalidRequest(TransportError):
    """The request could not be written (a header with a line break, a non-Latin-1 value...)."""


class Origin:
    """Where one upstream lives: scheme, host, port, TLS context, and the base path to prefix."""

    __slots__ = ("host", "host_header", "idle", "path", "port", "ssl")

    def __init__(self, base_url: str, ca_bundle: Path | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = parts.hostname
        default_port = 443 if parts.scheme == "https" else 80
        self.port = parts.port or default_port
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if self.port == default_port else f"{host}:{self.port}"
        self.path = parts.path.rstrip("/")
        self.ssl: ssl.SSLContext | None = None
        if parts.scheme == "https":
            ctx = ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle else None)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.set_alpn_protocols(["http/1.1"])
            self.ssl = ctx
        self.idle: deque[Connection] = deque()


class Response:
    """A complete response (status, lower-cased headers, body), or the head of a streamed one."""

    __slots__ = ("_conn", "body", "headers", "status")

    def __init__(self, conn: Connection, status: int, headers: list[tuple[str, str]]) -> None:
        self._conn = conn
        self.status = status
        self.headers = headers
        self.body = b""

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    async def read_chunk(self) -> bytes | None:
        """The next piece of a streamed body as it arrived, or None at its end."""
        return await self._conn.read_chunk()

    def close(self) -> None:
        """Done with a streamed response: back to the pool if it was read to the end, else closed."""
        release(self._conn)

    async def read_all(self) -> bytes:
        parts = []
        while (chunk := await self.read_chunk()) is not None:
            parts.append(chunk)
        return b"".join(parts)


class Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.reusable = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[Any] | None = None
        self._streaming = False
        self._headers: list[tuple[str, str]] = []
        self._header_bytes = 0
        self._body: deque[bytes] = deque()
        self._queued = 0
        self._paused = False
        self._complete = False
        self._head_done = False
        self._error: BaseException | None = None
        self._response: Response | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._timeout = 0.0
        self._last_read = 0.0

    # -- asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's class does not subclass it

    def data_received(self, data: bytes) -> None:
        if self._complete:  # bytes nobody asked for on an idle connection: drop it
            self.abort()
            return
        self._last_read = time.monotonic()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(TransportError(f"malformed response from the upstream: {type(exc).__name__}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._head_done and not self._complete and self._error is None and self._eof_delimited():
            self.on_message_complete()  # a body delimited by the end of the connection
            return
        if not self._complete:
            self._fail(TransportError("the upstream closed the connection"))

    def _eof_delimited(self) -> bool:
        """Whether the response's body has no length of its own and ends with the connection."""
        return not any(name in ("content-length", "transfer-encoding") for name, _ in self._headers)

    # -- httptools callbacks -------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._complete:  # a second response to one request: stop parsing, drop the connection
            raise TransportError("the upstream sent a response nobody asked for")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_HEADER_BYTES:
            raise TransportError("the upstream's response headers are too large")
        self._headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 100:  # not a status: llhttp would read a body to the end of the connection
            raise TransportError(f"the upstream answered with status {status}")
        if status < 200:  # 1xx interim response: wait for the real one
            self._headers = []
            return
        self._head_done = True
        self.reusable = self.parser.should_keep_alive()
        self._response = Response(self, status, self._headers)
        if self._streaming:
            self._wake(self._response)

    def on_body(self, body: bytes) -> None:
        if not self._head_done:  # a 1xx interim response has no body (RFC 9110 section 15.2)
            raise TransportError("the upstream sent a body with an interim response")
        self._body.append(body)
        if self._streaming:
            self._queued += len(body)
            if self._queued > STREAM_HIGH_WATER and not self._paused and self.transport is not None:
                self._paused = True
                self.transport.pause_reading()
            self._wake(None)

    def on_message_complete(self) -> None:
        if not self._head_done:  # the end of a 1xx interim response
            return
        self._complete = True
        self._cancel_deadline()
        if self._streaming:
            self._wake(None)
        else:
            assert self._response is not None
            self._response.body = b"".join(self._body)
            self._body.clear()
            self._wake(self._response)
        self._response = None

    # -- request side --------------------------------------------------------------------------------

    def start(self, head: bytes, body: bytes, streaming: bool, timeout: float) -> asyncio.Future[Any]:
        """Send one request; the future resolves to the complete response, or to the head when
        ``streaming``."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self._streaming = streaming
        self._headers = []
        self._header_bytes = 0
        self._body.clear()
        self._queued = 0
        self._complete = self._head_done = False
        self._error = None
        self._response = None
        self._waiter = loop.create_future()
        self._timeout = timeout
        self._last_read = time.monotonic()
        self._deadline = loop.call_later(timeout, self._on_deadline)
        self.transport.write(head + body if len(body) < 65536 else head)
        if len(body) >= 65536:
            self.transport.write(body)
        return self._waiter

    async def read_chunk(self) -> bytes | None:
        while True:
            if self._body:
                # One piece per chunk the upstream framed (one SSE event each, with OpenAI), so
                # guards that watch a stream see it at the granularity it was sent.
                chunk = self._body.popleft()
                self._queued -= len(chunk)
                if self._paused and self._queued <= STREAM_HIGH_WATER // 2 and self.transport is not None:
                    self._paused = False
                    self.transport.resume_reading()
                return chunk
            if self._error is not None:
                raise _fresh(self._error)
            if self._complete:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter

    def _wake(self, value: Any) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(value)

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        self._cancel_deadline()
        self.abort()
        self._response = None
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(_fresh(exc))

    def _on_deadline(self) -> None:
        # Streams time out when the upstream goes quiet for `timeout`; whole responses when the
        # response as a whole takes longer than `timeout`.
        self._deadline = None
        if self._paused:  # the client is reading slowly, not the upstream being quiet
            self._last_read = time.monotonic()
        if self._streaming and self._head_done:
            left = self._last_read + self._timeout - time.monotonic()
            if left > 0:
                self._deadline = asyncio.get_running_loop().call_later(left, self._on_deadline)
                return
        self._fail(ResponseTimeout("the upstream did not answer in time"))

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def finished_cleanly(self) -> bool:
        return self._complete and self._error is None and self.reusable and not self.closed

    def abort(self) -> None:
        self.closed = True
        self.reusable = False
        self._cancel_deadline()
        if self.transport is not None:
            self.transport.abort()


class Client:
    """Connection pools per origin; one request per connection at a time."""

    def __init__(self, connect_timeout: float, timeout: float, idle_timeout: float = 30.0) -> None:
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.idle_timeout = idle_timeout
        self._origins: dict[tuple[str, Path | None], Origin] = {}

    def origin(self, base_url: str, ca_bundle: Path | None = None) -> Origin:
        key = (base_url, ca_bundle)
        found = self._origins.get(key)
        if found is None:
            found = self._origins[key] = Origin(base_url, ca_bundle)
        return found

    async def request(
        self,
        origin: Origin,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes,
        streaming: bool = False,
    ) -> Response:
        """Send a request; a whole response, or (``streaming``) its head with the body to read."""
        head = _head(method, target, origin.host_header, headers, body, method != "GET")
        # No retry on another connection once the request is written: the upstream may have acted
        # on it (and billed it). A pooled connection the server already closed is never picked.
        conn = self._idle_connection(origin) or await self._connect(origin)
        try:
            response: Response = await conn.start(head, body, streaming, self.timeout)
        except BaseException:
            conn.abort()
            raise
        if not streaming:
            release(conn)
        return response

    def _idle_connection(self, origin: Origin) -> Connection | None:
        idle = origin.idle
        expired = time.monotonic() - self.idle_timeout
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.idle_since > expired:
                return conn
            conn.abort()
        return None

    async def _connect(self, origin: Origin) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: Connection(origin),
                    origin.host,
                    origin.port,
                    ssl=origin.ssl,
                    server_hostname=origin.host if origin.ssl else None,
                )
        except TimeoutError:
            raise ConnectTimeout("timed out connecting to the upstream") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectFailed(f"could not connect to the upstream: {type(exc).__name__}") from None
        assert isinstance(conn, Connection)  # uvloop and asyncio set TCP_NODELAY on TCP transports
        return conn

    def close(self) -> None:
        for origin in self._origins.values():
            while origin.idle:
                origin.idle.pop().abort()


def _fresh(exc: BaseException) -> BaseException:
    """A new instance of a stored error to raise: raising the stored one would tie its traceback,
    and every frame in it (the client's response stream among them), to this connection."""
    return type(exc)(*exc.args)


def release(conn: Connection) -> None:
    """Return a connection to its pool after its response was read to the end, or close it."""
    if not conn.finished_cleanly() or conn._body:
        conn.abort()
        return
    conn.idle_since = time.monotonic()
    idle = conn.origin.idle
    idle.append(conn)
    if len(idle) > MAX_IDLE_PER_ORIGIN:
        idle.popleft().abort()


def _head(
    method: str, target: str, host: str, headers: dict[str, str], body: bytes, with_length: bool
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1\r\nhost: {host}\r\n"]
    for name, value in headers.items():
        lines.append(f"{name}: {value}\r\n")
    if body or with_length:
        lines.append(f"content-length: {len(body)}\r\n")
    lines.append("\r\n")
    text = "".join(lines)
    # Every line break must be one we wrote: a CR, LF or NUL inside a name, value or target would
    # let a client smuggle a header or a second request.
    expected = len(lines) + 1  # the first entry holds the request line and the Host line
    if text.count("\n") != expected or text.count("\r") != expected or "\0" in text or " " in target:
        raise InvalidRequest("a request header or the path holds a line break or NUL")
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        raise InvalidRequest("a request header is not Latin-1 text") from None
