"""A client that reads a stream slowly slows the upstream read down (keygate.sockets.SendWindow):
what keygate holds for it stays bounded, and the client still gets every byte once it reads."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from keygate import http1, sockets

from .certs import CA
from .helpers import Gateway

EVENT_TEXT = "x" * (16 * 1024 - 120)
EVENT = (
    b"data: "
    + json.dumps(
        {
            "id": "c1",
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": EVENT_TEXT}}],
        }
    ).encode()
    + b"\n\n"
)
FRAME = f"{len(EVENT):x}\r\n".encode() + EVENT + b"\r\n"
DONE = b"data: [DONE]\n\n"
EVENTS = 3 * 1024  # 48 MiB of stream


def _rss() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class FastUpstream:
    """An upstream that streams EVENTS big SSE events as fast as its connection takes them, and
    counts the bytes it got into the kernel (``written``)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.written = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(65536)
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            body = head.split(b"\r\n\r\n", 1)[1]
            while len(body) < length:
                body += conn.recv(65536)
            conn.sendall(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
            )
            for _ in range(EVENTS):
                conn.sendall(FRAME)
                self.written += len(FRAME)
            conn.sendall(f"{len(DONE):x}\r\n".encode() + DONE + b"\r\n0\r\n\r\n")
            self.done.set()
            conn.recv(1)  # until keygate closes the connection

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def fast_upstream() -> Iterator[FastUpstream]:
    up = FastUpstream()
    yield up
    up.close()


def _settled(up: FastUpstream, quiet: float = 0.3, deadline: float = 10.0) -> int:
    """What the upstream managed to write once it has written nothing more for ``quiet`` seconds."""
    end = time.monotonic() + deadline
    last, since = up.written, time.monotonic()
    while time.monotonic() < end and not up.done.is_set():
        time.sleep(0.02)
        if up.written != last:
            last, since = up.written, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return up.written


def _read_response(client: socket.socket) -> bytes:
    """The whole chunked body of the answer on ``client``, de-chunked."""
    data = bytearray()
    while b"\r\n\r\n" not in data:
        data += client.recv(1 << 20)
    end = data.index(b"\r\n\r\n")
    head = bytes(data[:end]).lower()
    assert head.startswith(b"http/1.1 200") and b"transfer-encoding: chunked" in head, head[:300]
    while not data.endswith(b"\r\n0\r\n\r\n"):
        more = client.recv(1 << 20)
        assert more, "the stream ended early"
        data += more
    body, pos = bytearray(), end + 4
    while True:
        eol = data.index(b"\r\n", pos)
        size = int(data[pos:eol], 16)
        if size == 0:
            return bytes(body)
        body += data[eol + 2 : eol + 2 + size]
        pos = eol + 4 + size


@pytest.mark.parametrize(
    ("scheme", "host"),
    [("http", "127.0.0.1"), ("https", "127.0.0.1"), ("http", "0.0.0.0")],  # noqa: S104 - a wildcard listener
)
def test_a_client_that_reads_nothing_stops_the_upstream_read(
    tmp_path: Path, fast_upstream: FastUpstream, scheme: str, host: str
) -> None:
    extra = {}
    context: ssl.SSLContext | None = None
    if scheme == "https":  # with TLS, what granian writes is more than it was given: counted too
        ca = CA("keygate test CA")
        ca.write(tmp_path, "server", "keygate-1", server=True)
        extra = {"tls": {"cert": str(tmp_path / "server.crt"), "key": str(tmp_path / "server.key")}}
        context = ssl.create_default_context(cadata=ca.pem().decode())
    with Gateway(tmp_path, fast_upstream.url, extra=extra, host=host) as gw:
        key = gw.create_key()["key"]
        request = json.dumps({"model": "gpt-4o-mini", "messages": [], "stream": True}).encode()
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        client.connect(("127.0.0.1", gw.port))
        if context is not None:
            client = context.wrap_socket(client, server_hostname="127.0.0.1")
        rss_before = _rss()
        client.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: keygate\r\ncontent-type: application/json\r\n"
            + f"authorization: Bearer {key}\r\ncontent-length: {len(request)}\r\n\r\n".encode()
            + request
        )
        taken = _settled(fast_upstream)
        grown = _rss() - rss_before
        print(f"upstream wrote {taken / 2**20:.1f} MiB, keygate grew {grown / 2**20:.1f} MiB")
        # What the upstream could write: what keygate holds (its upstream reader's high-water mark,
        # the send window and its first look, one event) and what the kernel buffers between them.
        held = http1.STREAM_HIGH_WATER + sockets.WINDOW + sockets.FIRST_LOOK + len(FRAME)
        assert not fast_upstream.done.is_set(), (
            "the upstream wrote the whole stream to a client that read nothing"
        )
        assert taken < 16 * 1024 * 1024, (
            f"the upstream wrote {taken >> 20} MiB (keygate holds {held >> 10} KiB)"
        )
        assert grown < 8 * 1024 * 1024, f"keygate grew by {grown >> 20} MiB for one client that reads nothing"
        # The client reads now, and gets every event, in order, intact.
        client.settimeout(30)
        body = _read_response(client)
        client.close()
    events = body.split(b"\n\n")
    assert events[-1] == b"" and events[-2] == b"data: [DONE]"
    assert len(events) - 2 == EVENTS and all(e + b"\n\n" == EVENT for e in events[:-2])
