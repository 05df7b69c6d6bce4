"""The upstream HTTP/1.1 client against real loopback servers: the shipped mock, and a raw socket
server for the answers a well-behaved server never gives."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator

import pytest
import uvloop

from keygate import http1
from keygate.testing import DEFAULT_API_KEY, MockUpstream

AUTH = {"authorization": f"Bearer {DEFAULT_API_KEY}", "content-type": "application/json"}
CHAT = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'


def run(coro_fn: Callable[[], object]) -> None:
    uvloop.run(coro_fn())  # type: ignore[arg-type]


class RawServer:
    """Accepts connections; for each request read, `answer(conn, n)` writes whatever it likes."""

    def __init__(self, answer: Callable[[socket.socket, int], None]) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.requests: list[bytes] = []
        self.connections = 0
        self._answer = answer
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
                while b"\r\n\r\n" in data:
                    head, _, rest = data.partition(b"\r\n\r\n")
                    length = next(
                        (
                            int(line.split(b":")[1])
                            for line in head.split(b"\r\n")
                            if line.lower().startswith(b"content-length:")
                        ),
                        0,
                    )
                    if len(rest) < length:
                        break
                    self.requests.append(head + b"\r\n\r\n" + rest[:length])
                    data = rest[length:]
                    try:
                        self._answer(conn, len(self.requests))
                    except OSError:
                        return

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def mock() -> Iterator[MockUpstream]:
    with MockUpstream() as m:
        yield m


def test_keep_alive_reuses_one_connection(mock: MockUpstream) -> None:
    async def main() -> None:
        client = http1.Client(5, 5)
        origin = client.origin(mock.url)
        used = set()
        for _ in range(5):
            r = await client.request(origin, "POST", origin.path + "/chat/completions", AUTH, CHAT)
            assert r.status == 200 and b'"usage"' in r.body
            assert r.header("content-type") == "application/json"
            assert len(origin.idle) == 1 and not origin.idle[0].closed
            used.add(id(origin.idle[0]))
        assert len(used) == 1
        client.close()

    run(main)
    assert len(mock.requests) == 5
    assert mock.requests[0].headers["host"] == f"127.0.0.1:{mock.url.split(':')[2].split('/')[0]}"


def test_streamed_body_arrives_chunk_by_chunk(mock: MockUpstream) -> None:
    async def main() -> None:
        client = http1.Client(5, 5)
        origin = client.origin(mock.url)
        body = CHAT[:-1] + b',"stream":true}'
        r = await client.request(
            origin, "POST", origin.path + "/chat/completions", AUTH, body, streaming=True
        )
        assert r.status == 200 and (r.header("content-type") or "").startswith("text/event-stream")
        chunks = []
        while (chunk := await r.read_chunk()) is not None:
            chunks.append(chunk)
        r.close()
        assert len(chunks) > 3 and all(c.startswith(b"data: ") for c in chunks)
        assert chunks[-1].strip() == b"data: [DONE]"
        assert len(origin.idle) == 1  # read to the end: the connection is reused

    run(main)


def test_line_breaks_in_headers_or_target_are_refused_before_writing() -> None:
    server = RawServer(lambda conn, n: conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"))

    async def main() -> None:
        client = http1.Client(5, 5)
        origin = client.origin(server.url)
        for headers, target in (
            ({"accept": "a\r\nx-injected: 1"}, "/v1/models"),
            ({"accept": "a\nb"}, "/v1/models"),
            ({"accept": "a\0b"}, "/v1/models"),
            ({}, "/v1/models HTTP/1.1\r\nx: y"),
            ({"accept": "caf\u00e9\u2603"}, "/v1/models"),
        ):
            with pytest.raises(http1.InvalidRequest):
                await client.request(origin, "GET", target, headers, b"")
        r = await client.request(origin, "GET", "/v1/models", {"accept": "application/json"}, b"")
        assert r.status == 200

    run(main)
    assert len(server.requests) == 1 and b"x-injected" not in server.requests[0]
    server.close()


def test_body_delimited_by_close_and_interim_responses() -> None:
    def answer(conn: socket.socket, n: int) -> None:
        if n == 1:
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        else:
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end")
            conn.shutdown(socket.SHUT_WR)

    server = RawServer(answer)

    async def main() -> None:
        client = http1.Client(5, 5)
        origin = client.origin(server.url)
        first = await client.request(origin, "GET", "/v1/models", {}, b"")
        assert (first.status, first.body) == (200, b"ok")
        second = await client.request(origin, "GET", "/v1/models", {}, b"")
        assert (second.status, second.body) == (200, b"until the end")
        assert not origin.idle  # a connection the server closed is never reused

    run(main)
    server.close()


def test_an_extra_response_in_the_same_packet_drops_the_connection() -> None:
    server = RawServer(
        lambda conn, n: conn.sendall(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-a: 1\r\n\r\nok"
            b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nx-b: 2\r\n\r\nevil"
        )
    )

    async def main() -> None:
        client = http1.Client(5, 5)
        origin = client.origin(server.url)
        r = await client.request(origin, "GET", "/v1/models", {}, b"")
        assert (r.status, r.body, r.headers) == (200, b"ok", [("content-length", "2"), ("x-a", "1")])
        assert not origin.idle
        again = await client.request(origin, "GET", "/v1/models", {}, b"")
        assert again.body == b"ok"

    run(main)
    assert server.connections == 2
    server.close()


@pytest.mark.parametrize(
    "reply",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",  # then the connection closes
        b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * 70_000 + b"\r\n\r\n",
        b"",  # closed without an answer
    ],
)
def test_broken_answers_are_transport_errors(reply: bytes) -> None:
    def answer(conn: socket.socket, n: int) -> None:
        conn.sendall(reply)
        conn.shutdown(socket.SHUT_RDWR)

    server = RawServer(answer)

    async def main() -> None:
        client = http1.Client(5, 5)
        origin = client.origin(server.url)
        with pytest.raises(http1.TransportError):
            await client.request(origin, "GET", "/v1/models", {}, b"")
        assert not origin.idle

    run(main)
    server.close()


def test_timeouts_close_the_connection() -> None:
    def answer(conn: socket.socket, n: int) -> None:
        if n == 1:
            return  # never answers
        conn.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")  # then quiet

    server = RawServer(answer)

    async def main() -> None:
        client = http1.Client(5, 0.3)
        origin = client.origin(server.url)
        with pytest.raises(http1.ResponseTimeout):
            await client.request(origin, "GET", "/v1/models", {}, b"")
        r = await client.request(origin, "GET", "/v1/models", {}, b"", streaming=True)
        assert await r.read_chunk() == b"first"
        with pytest.raises(http1.ResponseTimeout):
            await r.read_chunk()
        r.close()
        assert not origin.idle

    run(main)
    assert server.connections == 2
    server.close()


def test_refused_and_connect_timeout() -> None:
    port = socket.create_server(("127.0.0.1", 0))
    closed = port.getsockname()[1]
    port.close()
    # A listener that never accepts, its backlog already full: a new SYN is dropped, so connecting
    # hangs until the connect timeout.
    full = socket.create_server(("127.0.0.1", 0), backlog=0)
    fillers = [socket.socket() for _ in range(3)]
    for filler in fillers:
        filler.setblocking(False)
        filler.connect_ex(full.getsockname())

    async def main() -> None:
        client = http1.Client(0.5, 5)
        with pytest.raises(http1.ConnectFailed):
            await client.request(client.origin(f"http://127.0.0.1:{closed}/v1"), "GET", "/v1/models", {}, b"")
        with pytest.raises(http1.ConnectTimeout):
            await client.request(
                client.origin(f"http://127.0.0.1:{full.getsockname()[1]}/v1"), "GET", "/v1/models", {}, b""
            )

    run(main)
    for s in (*fillers, full):
        s.close()


def test_a_cancelled_request_closes_its_connection(mock: MockUpstream) -> None:
    mock.fail_next("slow", delay=2.0)

    async def main() -> None:
        client = http1.Client(5, 5)
        origin = client.origin(mock.url)
        task = asyncio.ensure_future(client.request(origin, "GET", origin.path + "/models", AUTH, b""))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not origin.idle
        r = await client.request(origin, "GET", origin.path + "/models", AUTH, b"")
        assert r.status == 200

    run(main)
