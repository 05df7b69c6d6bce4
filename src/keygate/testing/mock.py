"""A real mock OpenAI upstream: an HTTP server on loopback that speaks enough OpenAI to test against.

    with MockUpstream() as upstream:
        client = OpenAI(base_url=upstream.url, api_key="sk-mock-upstream-key")
        client.chat.completions.create(model="gpt-4o", messages=[...])
        upstream.fail_next("429", retry_after=2)      # the next request gets a rate-limit error
        assert upstream.requests[-1].headers["authorization"] == "Bearer sk-mock-upstream-key"

It is a stdlib `ThreadingHTTPServer` speaking HTTP/1.1 keep-alive in a background thread. Streams are
chunked by hand and flushed per server-sent event, so connections stay reusable. Every response
carries the headers a real upstream sends, including ones a gateway must strip (`set-cookie`,
`openai-organization`, ...), and a rejected key is echoed in full in the 401 body, so a gateway's
tests can prove such bodies never reach their clients.

Stored objects (files, uploads, batches, vector stores, conversations, stored responses and chat
completions) are kept in memory with OpenAI-like ids and cursor pagination (``_objects.py``,
``_stores.py``, ``_page.py``); a batch completes at once, its output file holding the mock's answer
to each line. ``reset()`` forgets them too.

Run it standalone with ``python -m keygate.testing --port 9000 [--api-key K ...]``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from types import TracebackType
from typing import Any

import orjson

from . import _payloads as payloads
from ._objects import Objects
from ._routes import Reply, StreamReply, failure_reply, find_route, invalid, json_reply, unauthorized

__all__ = ["DEFAULT_API_KEY", "FAILURE_MODES", "MockUpstream", "RecordedRequest"]

DEFAULT_API_KEY = "sk-mock-upstream-key"
FAILURE_MODES = frozenset({"401", "403", "429", "500", "503", "slow", "disconnect", "disconnect_mid_stream"})
_MAX_BODY = 64 * 1024 * 1024
_MIDSTREAM_EVENTS = 2


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the mock received it (chunked bodies already de-chunked)."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    raw_headers: list[tuple[str, str]]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        return orjson.loads(self.body)


@dataclass(frozen=True)
class _Failure:
    mode: str
    retry_after: int
    delay: float


class _State:
    """What the handler threads share with `MockUpstream`, behind one lock."""

    def __init__(self, api_keys: Iterable[str]) -> None:
        self.lock = threading.Lock()
        self.api_keys = frozenset(api_keys)
        self.requests: list[RecordedRequest] = []
        self.queued: deque[_Failure] = deque()
        self.scripted: deque[Reply | StreamReply] = deque()
        self.persistent: _Failure | None = None
        self.stream_aborts = 0
        self.connections: set[socket.socket] = set()
        self.objects = Objects()  # stored files, batches, vector stores, responses...

    def record(self, request: RecordedRequest) -> _Failure | Reply | StreamReply | None:
        """Record a request and take the scripted reply or failure (if any) it gets."""
        with self.lock:
            self.requests.append(request)
            if self.scripted:
                return self.scripted.popleft()
            return self.queued.popleft() if self.queued else self.persistent

    def count_abort(self) -> None:
        with self.lock:
            self.stream_aborts += 1


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else a small write waits ~40 ms on the peer's delayed ACK
    server: _Server

    def version_string(self) -> str:
        return "cloudflare"

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: tests read `MockUpstream.requests` instead."""

    def setup(self) -> None:
        super().setup()
        with self.server.state.lock:
            self.server.state.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.state.lock:
            self.server.state.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def do_GET(self) -> None:
        """Serve any method through the same path."""
        self._handle()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _handle(self) -> None:
        self._started = time.monotonic()
        path, _, query = self.path.partition("?")
        self._query = query
        try:
            body = self._read_body()
        except (ValueError, OSError):
            self.close_connection = True
            body = None
        raw_headers = list(self.headers.items())
        headers = {name.lower(): value for name, value in raw_headers}
        request = RecordedRequest(self.command, path, query, headers, raw_headers, body or b"")
        failure = self.server.state.record(request)
        try:
            if isinstance(failure, StreamReply):
                self._send_stream(failure.events, 0.0, None, failure.headers)
            elif isinstance(failure, Reply):
                self._send(failure)
            elif body is None:
                self._send(invalid("The request body could not be read."))
            else:
                self._respond(path, body, headers, failure)
        except OSError:
            self.close_connection = True

    def _respond(self, path: str, body: bytes, headers: dict[str, str], failure: _Failure | None) -> None:
        mode, delay = (failure.mode, failure.delay) if failure else (None, 0.0)
        key = _bearer_key(headers.get("authorization"))
        reply: Reply | StreamReply | None = None  # stays None only for "disconnect"
        if failure is not None:
            reply = failure_reply(failure.mode, key, failure.retry_after)
        if reply is None and mode != "disconnect":
            reply = self._normal_reply(path, body, headers, key)
        if isinstance(reply, StreamReply):  # only with no failure, "slow" or "disconnect_mid_stream"
            cut = _MIDSTREAM_EVENTS if mode == "disconnect_mid_stream" else None
            self._send_stream(reply.events, delay, cut, reply.headers)
            return
        gone = delay > 0 and self._client_gone_within(delay)
        if reply is None or gone or mode == "disconnect_mid_stream":
            self.close_connection = True  # no response at all (a plain reply has no "mid-stream")
            return
        self._send(reply)

    def _normal_reply(
        self, path: str, body: bytes, headers: dict[str, str], key: str | None
    ) -> Reply | StreamReply:
        if key is None or key not in self.server.state.api_keys:
            return unauthorized(key)
        stored = self._stored(path, body, headers.get("content-type", ""))
        if stored is not None:
            return stored
        found = find_route(self.command, path)
        if found is None:
            return invalid(f"Invalid URL ({self.command} {path})", 404)
        route, arg = found
        reply = route(body, headers.get("content-type", ""), arg)
        if self.command == "POST" and path in ("/v1/responses", "/v1/chat/completions"):
            self._keep(path, body, reply)
        return reply

    def _stored(self, path: str, body: bytes, content_type: str) -> Reply | None:
        """The answer of a stored-object route (files, batches, ... : testing/_objects.py)."""
        handled = self.server.state.objects.handle(self.command, path, self._query, body, content_type)
        if handled is None:
            return None
        status, payload = handled
        if isinstance(payload, bytes):
            return Reply(status, payload, "application/octet-stream")
        return json_reply(status, payload)

    def _keep(self, path: str, body: bytes, reply: Reply | StreamReply) -> None:
        """Store what a created response or chat completion says (as the real API does)."""
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError:
            return
        if not isinstance(request, dict):
            return
        objects = self.server.state.objects
        if isinstance(reply, Reply):
            if reply.status != 200:
                return
            answer = orjson.loads(reply.body)
        else:
            answer = payloads.stored_from_stream(path, request, reply.events)
            if answer is None:
                return
        if path == "/v1/responses":
            objects.keep_response(request, answer)
        else:
            objects.keep_chat(request, answer)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            return self._read_chunked()
        length = int(self.headers.get("content-length") or 0)
        if not 0 <= length <= _MAX_BODY:
            raise ValueError("bad content-length")
        body = self.rfile.read(length)
        if len(body) != length:
            raise ValueError("truncated body")
        return body

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            size = int(self.rfile.readline(1024).split(b";", 1)[0].strip(), 16)
            if size == 0:
                break
            total += size
            if total > _MAX_BODY:
                raise ValueError("body too large")
            chunk = self.rfile.read(size)
            if len(chunk) != size or self.rfile.readline(3) not in (b"\r\n", b"\n"):
                raise ValueError("malformed chunk")
            parts.append(chunk)
        while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
            pass  # trailers
        return b"".join(parts)

    def _standard_headers(self) -> dict[str, str]:
        """The headers every OpenAI response carries, some of which a gateway must strip."""
        return {
            "x-request-id": payloads.new_id("req_"),
            "openai-organization": "org-mock",
            "openai-project": "proj_mock",
            "openai-version": "2020-10-01",
            "openai-processing-ms": str(int((time.monotonic() - self._started) * 1000)),
            "x-ratelimit-limit-requests": "10000",
            "x-ratelimit-remaining-requests": "9999",
            "x-ratelimit-reset-requests": "6ms",
            "x-ratelimit-limit-tokens": "30000000",
            "x-ratelimit-remaining-tokens": "29999990",
            "x-ratelimit-reset-tokens": "0s",
            "set-cookie": "__cf_bm=mock; path=/",
            "access-control-expose-headers": "X-Request-ID",
            "cf-ray": "mock-" + payloads.new_id("")[:16],
            "connection": "close" if self.close_connection else "keep-alive",
        }

    def _start_response(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def _send(self, reply: Reply) -> None:
        headers = {**self._standard_headers(), **dict(reply.headers), "content-type": reply.content_type}
        headers["content-length"] = str(len(reply.body))
        self._start_response(reply.status, headers)
        self.wfile.write(reply.body)

    def _send_stream(
        self,
        events: list[bytes],
        pause: float,
        cut_after: int | None,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> None:
        headers = {
            **self._standard_headers(),
            **dict(extra),
            "content-type": "text/event-stream; charset=utf-8",
        }
        headers.update({"transfer-encoding": "chunked", "cache-control": "no-cache"})
        self._start_response(200, headers)
        try:
            for index, event in enumerate(events):
                if index == cut_after:
                    self.close_connection = True  # no terminating chunk: the client sees a cut body
                    return
                if pause > 0 and self._client_gone_within(pause):
                    raise ConnectionAbortedError("client went away")
                self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            self.server.state.count_abort()
            self.close_connection = True

    def _client_gone_within(self, seconds: float) -> bool:
        """Wait up to `seconds`; True as soon as the client closes the connection."""
        deadline = time.monotonic() + seconds
        sock = self.connection
        try:
            sock.settimeout(seconds)
            peeked = sock.recv(1, socket.MSG_PEEK)
        except TimeoutError:
            return False
        except OSError:
            return True
        finally:
            with contextlib.suppress(OSError):
                sock.settimeout(self.timeout)
        if not peeked:
            return True
        time.sleep(max(0.0, deadline - time.monotonic()))  # a pipelined request: just wait
        return False


def _bearer_key(authorization: str | None) -> str | None:
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], state: _State) -> None:
        self.state = state
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls getfqdn(), which can stall for seconds on reverse DNS.
        TCPServer.server_bind(self)
        host, port = self.socket.getsockname()[:2]
        self.server_name, self.server_port = str(host), int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # clients going away is normal here
            super().handle_error(request, client_address)


class _Server6(_Server):
    address_family = socket.AF_INET6


class MockUpstream:
    """A mock OpenAI upstream serving on a real socket in a background thread."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, api_keys: Iterable[str] = (DEFAULT_API_KEY,)
    ) -> None:
        self._host = host
        self._port = port
        self._state = _State(api_keys)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> MockUpstream:
        """Bind and serve in a daemon thread; returns self."""
        if self._server is not None:
            raise RuntimeError("MockUpstream is already running")
        server_class = _Server6 if ":" in self._host else _Server
        self._server = server_class((self._host, self._port), self._state)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"keygate-mock-upstream-{self._server.server_port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and cut every open connection, idle keep-alive ones included."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._server = self._thread = None
        server.shutdown()
        with self._state.lock:
            connections = list(self._state.connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        server.server_close()  # (joins the handler threads: only once their connections are cut)
        thread.join(timeout=5)

    def __enter__(self) -> MockUpstream:
        return self if self._server is not None else self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port (useful with ``port=0``)."""
        if self._server is None:
            raise RuntimeError("MockUpstream is not running")
        return self._server.server_port

    @property
    def url(self) -> str:
        """The base URL for an OpenAI client, e.g. ``http://127.0.0.1:PORT/v1``."""
        return f"http://{_url_host(self._host)}:{self.port}/v1"

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of the recorded requests, in arrival order."""
        with self._state.lock:
            return list(self._state.requests)

    @property
    def stream_aborts(self) -> int:
        """How many streamed responses stopped because the client went away."""
        with self._state.lock:
            return self._state.stream_aborts

    def reset(self) -> None:
        """Forget recorded requests, queued and persistent failures, and the stream-abort count."""
        with self._state.lock:
            self._state.requests.clear()
            self._state.queued.clear()
            self._state.scripted.clear()
            self._state.persistent = None
            self._state.stream_aborts = 0
            self._state.objects = Objects()

    def set_api_keys(self, keys: Iterable[str]) -> None:
        """Accept exactly these bearer keys from now on; any other key gets a 401."""
        with self._state.lock:
            self._state.api_keys = frozenset(keys)

    def fail_next(self, mode: str, count: int = 1, *, retry_after: int = 1, delay: float = 0.0) -> None:
        """Answer the next `count` requests with failure `mode` (see `FAILURE_MODES`).

        `retry_after` is the 429's Retry-After in seconds. `delay` is the wait before answering; for
        streamed replies ("slow", "disconnect_mid_stream") it is the wait before each event instead.
        Requests are still recorded.
        """
        failure = _make_failure(mode, retry_after, delay)
        if count < 1:
            raise ValueError("count must be at least 1")
        with self._state.lock:
            self._state.queued.extend([failure] * count)

    def reply_next(
        self,
        status: int = 200,
        body: Any = None,
        *,
        events: Iterable[Any] | None = None,
        headers: dict[str, str] | None = None,
        count: int = 1,
    ) -> None:
        """Answer the next `count` requests with exactly this reply, whatever they ask (scripted
        replies are served before failures, and need no valid key).

        `body` is JSON (a dict or list, encoded) or raw bytes; `events` instead makes the reply a
        200 server-sent event stream, one event per item (a dict is sent as ``data: <json>``, a
        ``str`` or ``bytes`` as the event's raw text). `headers` are added to (or replace) the
        standard upstream headers.
        """
        extra = tuple((headers or {}).items())
        reply: Reply | StreamReply
        if events is not None:
            encoded = [
                e if isinstance(e, bytes) else e.encode() if isinstance(e, str) else payloads.sse_data(e)
                for e in events
            ]
            reply = StreamReply([e if e.endswith(b"\n\n") else e + b"\n\n" for e in encoded], extra)
        else:
            raw = body if isinstance(body, bytes) else orjson.dumps(body if body is not None else {})
            reply = Reply(status, raw, headers=extra)
        if count < 1:
            raise ValueError("count must be at least 1")
        with self._state.lock:
            self._state.scripted.extend([reply] * count)

    def fail_always(self, mode: str | None, *, retry_after: int = 1, delay: float = 0.0) -> None:
        """Answer every request with failure `mode` until `reset()` or ``fail_always(None)``.

        Failures queued by `fail_next` are served first.
        """
        failure = None if mode is None else _make_failure(mode, retry_after, delay)
        with self._state.lock:
            self._state.persistent = failure


def _make_failure(mode: str, retry_after: int, delay: float) -> _Failure:
    if mode not in FAILURE_MODES:
        raise ValueError(f"unknown failure mode {mode!r}; expected one of {sorted(FAILURE_MODES)}")
    if retry_after < 0 or delay < 0:
        raise ValueError("retry_after and delay must not be negative")
    if mode == "slow" and delay <= 0:
        raise ValueError('failure mode "slow" needs delay > 0')
    return _Failure(mode, retry_after, delay)


def _url_host(host: str) -> str:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host or "127.0.0.1"
    if address.is_unspecified:
        return "127.0.0.1" if address.version == 4 else "[::1]"
    return f"[{host}]" if address.version == 6 else host
