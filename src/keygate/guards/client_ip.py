"""Who is the client, and may its network talk to us at all (checked before authentication).

The client IP is the socket peer. Only when the peer is one of the configured
``trusted_proxies`` is the forwarding header (``X-Forwarded-For`` by default, or ``Forwarded``)
read, and then the right-most address that is not itself a trusted proxy is the client: the
left-hand entries are whatever the client chose to send and prove nothing. From any other peer
the header is ignored, so a forged ``X-Forwarded-For`` changes nothing.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Sequence

from ..access_config import Network, NetworkSettings
from ..chain import Guard
from ..context import Context
from ..errors import InvalidRequest, KeygateError, PermissionDenied
from ..types import IPAddress

BLOCKED = PermissionDenied("Requests from your network are not allowed.", code="ip_not_allowed")
BAD_FORWARDING = InvalidRequest("Malformed forwarding header from a trusted proxy.", code="bad_forwarding")
_FOR = re.compile(r'(?i)(?:^|;)\s*for\s*=\s*("[^"]*"|[^;,\s]*)')


@functools.lru_cache(maxsize=8192)
def parse_ip(text: str) -> IPAddress | None:
    """An IP address from a peer or forwarding entry ("1.2.3.4", "::1", "[::1]:80", "1.2.3.4:80").

    Cached: the same few client addresses arrive over and over, and ``ipaddress`` parsing costs
    microseconds on every request otherwise.
    """
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


@functools.lru_cache(maxsize=8192)
def _text(addr: IPAddress) -> str:
    return str(addr)


def in_networks(addr: IPAddress, networks: Sequence[Network]) -> bool:
    return any(addr.version == n.version and addr in n for n in networks)


def forwarded_chain(header: str, value: str) -> list[str]:
    """The hop addresses in a forwarding header, left (origin) to right (nearest proxy)."""
    if header == "forwarded":
        return [m.group(1) for element in value.split(",") for m in [_FOR.search(element)] if m]
    return [part for part in value.split(",") if part.strip()]


def resolve_client(peer: IPAddress, headers: dict[str, str], settings: NetworkSettings) -> IPAddress | None:
    """The client address, or None when a trusted proxy sent a malformed header."""
    if not settings.trusted_proxies or not in_networks(peer, settings.trusted_proxies):
        return peer
    value = headers.get(settings.forwarded_header)
    if not value:
        return peer
    client = peer
    for entry in reversed(forwarded_chain(settings.forwarded_header, value)):
        addr = parse_ip(entry)
        if addr is None:
            return None
        client = addr
        if not in_networks(addr, settings.trusted_proxies):
            return addr
    return client  # every hop was a trusted proxy: the left-most one is the origin


class ClientIP(Guard):
    """Set ``ctx.client_ip`` and apply the global deny and allow lists."""

    name = "client_ip"
    provides = frozenset({"client_ip", "client_addr"})

    def __init__(self, settings: NetworkSettings) -> None:
        self._settings = settings

    def request(self, ctx: Context) -> KeygateError | None:
        peer = parse_ip(ctx.peer_ip)
        if peer is None:
            return BLOCKED
        client = resolve_client(peer, ctx.headers, self._settings)
        if client is None:
            return BAD_FORWARDING
        ctx.client_ip = _text(client)
        ctx.client_addr = client
        settings = self._settings
        if settings.deny and in_networks(client, settings.deny):
            return BLOCKED
        if settings.allow and not in_networks(client, settings.allow):
            return BLOCKED
        return None
