"""The sockets keygate holds itself: its listening sockets, and how far a client has taken a stream.

**Listening.** granian binds its own listeners with ``SO_REUSEPORT``, so a second ``keygate serve``
on the same address starts without a word and the kernel splits the connections between the two
(each enforcing the full limits). keygate binds each listener itself instead, without
``SO_REUSEPORT``, and hands granian the descriptor (:class:`OwnSocketServer`): the kernel then
refuses a second listener on the address at ``listen()``, even when two start at the same moment.

**Streams.** granian's RSGI stream transport queues what ``send_bytes`` is given in an unbounded
channel and resolves the call at once (granian 2.8.9), so a client that reads slowly would let
keygate pull the whole upstream answer into memory. :class:`SendWindow` bounds what a stream has
handed granian but the client's connection has not taken yet: it counts the bytes it hands over
and, past a window, asks the kernel (Linux ``sock_diag``, by the connection's addresses, one
netlink round trip of about 10 µs) how many bytes granian has written to the connection; while too
much is still queued it waits, and so stops reading the upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import socket
import struct
import threading
from typing import Any

from granian._granian import SocketHolder
from granian.server.embed import Server

from .errors import ConfigError

log = logging.getLogger("keygate")

# --- listening ------------------------------------------------------------------------------------


def listening_socket(field: str, host: str, port: int, backlog: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` that no other socket may share.

    ``SO_REUSEADDR`` lets a restart bind while the previous run's connections linger in TIME_WAIT;
    without ``SO_REUSEPORT``, Linux refuses a second listener on the address (at ``listen()``, so
    two processes binding at the same moment cannot both win). A ConfigError names the setting
    (``field``) and the address.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    shown = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # accepted sockets inherit it
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            reason = "the address is in use (is another keygate, or another program, serving it?)"
        else:
            reason = exc.strerror or str(exc)
        raise ConfigError(f"{field}: could not listen on {shown}: {reason}") from None
    return sock


class OwnSocketServer(Server):
    """granian's embedded server on a listening socket keygate bound (see :func:`listening_socket`).

    Each worker gets its own duplicate of the descriptor: a worker closes its listener when it
    stops, and during a TLS reload an old and a new worker serve side by side.
    """

    def __init__(self, target: Any, sock: socket.socket, **options: Any) -> None:
        host, port = sock.getsockname()[:2]
        super().__init__(target, address=host, port=port, **options)
        self.sock = sock
        self.spawned = asyncio.Event()  # set once a worker was spawned (its task created)

    def _init_shared_socket(self) -> None:
        self._ssp = None  # granian must not bind a socket of its own

    def _spawn_worker(self, *args: Any, **kwargs: Any) -> Any:
        holder: Any = SocketHolder  # granian's stub omits its constructor
        fd = os.dup(self.sock.fileno())
        try:
            shared = holder(fd, False, self.backlog)  # Linux and FreeBSD: (fd, uds, backlog)
        except TypeError:
            shared = holder(fd, False)  # elsewhere: (fd, uds)
        server: Any = self
        server._shd = shared
        worker = super()._spawn_worker(*args, **kwargs)
        self.spawned.set()
        return worker


# --- streams --------------------------------------------------------------------------------------

WINDOW = 64 * 1024
"""Bytes a stream may have handed granian beyond what the client's connection has taken."""
FIRST_LOOK = 16 * 1024
"""A stream first asks the kernel once it has handed over this much (shorter ones never ask)."""
_TLS_RECORD_OVERHEAD = 29  # the most a TLS 1.2/1.3 record adds to its plaintext (AES-GCM, TLS 1.2)

_SOCK_DIAG_BY_FAMILY = 20
_NETLINK_SOCK_DIAG = 4
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_INET_DIAG_INFO = 2
_TCPI_BYTES_ACKED = 120  # offset of tcpi_bytes_acked in struct tcp_info (Linux >= 4.1)
_NO_COOKIE = 0xFFFFFFFF
_ESTABLISHED, _CLOSE_WAIT = 1, 8  # the states of a connection that granian may still write to
_CONNECTED = (1 << _ESTABLISHED) | (1 << _CLOSE_WAIT)


class _Netlink(threading.local):
    sock: socket.socket | None = None
    broken = False


_netlink = _Netlink()  # one socket per thread: each in-process gateway runs a loop of its own


def _split(address: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    host, _, port = address.rpartition(":")
    return ipaddress.ip_address(host.strip("[]")), int(port)


def _request(family: int, local: bytes, lport: int, peer: bytes, pport: int, dump: bool) -> bytes:
    """A sock_diag request for the TCP connection ``local:lport`` - ``peer:pport`` (addresses
    packed, 16 bytes); ``dump`` lists the connections between those ports, whatever ``local``."""
    req = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 1 << (_INET_DIAG_INFO - 1), 0, _CONNECTED)
    req += struct.pack("!HH", lport, pport) + local + peer + struct.pack("=III", 0, _NO_COOKIE, _NO_COOKIE)
    flags = _NLM_F_REQUEST | (_NLM_F_DUMP if dump else 0)
    return struct.pack("=IHHII", 16 + len(req), _SOCK_DIAG_BY_FAMILY, flags, 0, 0) + req


def _ask(request: bytes) -> list[tuple[bytes, int]]:
    """The kernel's answers to ``request``: each inet_diag message and where it starts."""
    nl = _netlink.sock
    if nl is None:
        if _netlink.broken:
            return []
        try:
            nl = _netlink.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG)
        except (OSError, AttributeError):  # not Linux, or netlink not allowed here
            _netlink.broken = True
            log.warning("no sock_diag here: what a slow client's stream buffers is not bounded")
            return []
    found: list[tuple[bytes, int]] = []
    try:
        nl.send(request)
        while True:
            data = nl.recv(65536)
            offset = 0
            while offset + 16 <= len(data):
                length, kind, flags = struct.unpack_from("=IHH", data, offset)
                if kind in (_NLMSG_ERROR, _NLMSG_DONE) or length < 16:
                    return found
                if length >= 16 + 72:
                    found.append((data, offset))
                offset += (length + 3) & ~3
            if not flags & 0x2:  # NLM_F_MULTI: a dump, which ends with NLMSG_DONE
                return found
    except OSError:
        return found


def _written(answer: tuple[bytes, int]) -> tuple[int, int] | None:
    """(bytes written to the connection so far, bytes of them the kernel still holds) from one
    answer, or None when it is not about a connection granian may write to."""
    data, start = answer
    length = struct.unpack_from("=I", data, start)[0]
    if data[start + 17] not in (_ESTABLISHED, _CLOSE_WAIT):  # inet_diag_msg.idiag_state
        return None
    queued: int = struct.unpack_from("=I", data, start + 16 + 4 + 48 + 8)[0]  # idiag_wqueue
    offset = start + 16 + 72
    while offset + 4 <= start + length:
        size, kind = struct.unpack_from("=HH", data, offset)
        if kind == _INET_DIAG_INFO and size >= 4 + _TCPI_BYTES_ACKED + 8:
            acked: int = struct.unpack_from("=Q", data, offset + 4 + _TCPI_BYTES_ACKED)[0]
            return acked + queued, queued
        if size < 4:
            break
        offset += (size + 3) & ~3
    return None


def _connection(server: str, client: str) -> bytes | None:
    """The sock_diag request that finds the connection granian reports as ``server``/``client``
    ("host:port"). ``server`` is the listener's address, so behind a wildcard listener (0.0.0.0,
    ::) the connection's own local address is looked up once, by its ports and the peer."""
    try:
        (local, lport), (peer, pport) = _split(server), _split(client)
    except ValueError:
        return None
    family = socket.AF_INET6 if local.version == 6 else socket.AF_INET
    if peer.version != local.version:
        return None
    peer_bytes = peer.packed.ljust(16, b"\0")
    local_bytes = local.packed.ljust(16, b"\0")
    if local.is_unspecified:
        for data, start in _ask(_request(family, local_bytes, lport, peer_bytes, pport, dump=True)):
            if data[start + 16 + 4 + 20 : start + 16 + 4 + 36] == peer_bytes:  # idiag_dst
                local_bytes = data[start + 16 + 4 + 4 : start + 16 + 4 + 20]  # idiag_src
                break
        else:
            return None
    return _request(family, local_bytes, lport, peer_bytes, pport, dump=False)


class SendWindow:
    """Bounds the bytes one stream has handed granian beyond what its connection has taken.

    ``cost`` of each piece is what granian writes for it (HTTP/1.1 chunk framing, and with TLS the
    most its records could add), so on a plain connection the count matches the kernel's exactly;
    with TLS it can only run ahead, and is set right whenever the kernel holds nothing unsent.
    """

    __slots__ = ("_base_sent", "_base_written", "_request", "_scope", "_tls", "limit", "sent")

    def __init__(self, scope: Any) -> None:
        self._scope = scope
        self._tls = getattr(scope, "scheme", "http") == "https"
        self._request: bytes | None = None
        self._base_sent = 0
        self._base_written = -1  # no look yet
        self.sent = 0
        self.limit = FIRST_LOOK  # until a look at the kernel, this much may go out unchecked

    def cost(self, size: int) -> int:
        framed = size + ((size.bit_length() + 3) >> 2) + 4  # "<hex size>\r\n" data "\r\n"
        if self._tls:  # at most a record for each of the three parts, and one per 16 KiB
            framed += _TLS_RECORD_OVERHEAD * (3 + (size >> 14))
        return framed

    async def wait(self, cost: int) -> None:
        """Called when ``sent`` passed ``limit``: return once the piece of ``cost`` may go."""
        delay = 0.001
        while True:
            written = self._look()
            if written is None:
                self.limit = 1 << 62  # the kernel cannot say: unbounded, as granian is
                return
            total, queued = written
            before = self.sent - cost
            if self._base_written < 0 or queued == 0:
                # The first look, or the kernel has sent all it was given (so granian holds nothing
                # it could write): count from here.
                self._base_sent, self._base_written = before, total
            taken = self._base_sent + (total - self._base_written)  # what the connection has taken
            self.limit = taken + WINDOW
            if self.sent <= self.limit or before <= taken:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _look(self) -> tuple[int, int] | None:
        request = self._request
        if request is None:
            scope = self._scope
            with contextlib.suppress(AttributeError):
                request = _connection(scope.server, scope.client)
            if request is None:
                return None
            self._request = request
        answers = _ask(request)
        return _written(answers[0]) if answers else None
