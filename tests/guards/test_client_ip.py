"""Who the client is and whether its network may talk to us, before authentication: address
parsing, forwarding headers from trusted proxies only, global allow and deny lists. The guard in
process first, then through a real keygate (forged headers, trusted proxies, IPv6 listeners)."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Any

import openai
import pytest

from keygate import schema
from keygate.access_config import NetworkSettings
from keygate.errors import InvalidRequest, PermissionDenied
from keygate.guards.client_ip import ClientIP, forwarded_chain, in_networks, parse_ip, resolve_client
from keygate.testing import MockUpstream, context

from ..helpers import Gateway
from .common import decide
from .common import post_chat as post


def _network(**raw: Any) -> NetworkSettings:
    return schema.build(NetworkSettings, raw, "network")


def _client(guard: ClientIP, peer: str, **headers: str) -> tuple[object, str, object]:
    ctx = context("GET", "/v1/models", peer=peer, headers=headers)
    err = decide(guard, ctx)
    return err, ctx.client_ip, ctx.client_addr


# -- addresses -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("198.51.100.7", "198.51.100.7"),
        (" 198.51.100.7 ", "198.51.100.7"),
        ("198.51.100.7:4711", "198.51.100.7"),
        ('"198.51.100.7"', "198.51.100.7"),
        ("2001:db8::5", "2001:db8::5"),
        ("[2001:db8::5]:4711", "2001:db8::5"),
        ('"[2001:db8::5]:4711"', "2001:db8::5"),
        ("[2001:db8::5]", "2001:db8::5"),
        ("::ffff:10.1.2.3", "10.1.2.3"),  # an IPv4-mapped address is the IPv4 client
        ("[2001:db8::5", None),
        ("garbage", None),
        ("unknown", None),  # what RFC 7239 allows for an undisclosed hop
        ("_hidden", None),
        ("", None),
        ("10.0.0.300", None),
    ],
)
def test_parse_ip(text: str, expected: str | None) -> None:
    found = parse_ip(text)
    assert (str(found) if found is not None else None) == expected


def test_in_networks_never_mixes_address_families() -> None:
    nets = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::/0"))
    assert in_networks(ipaddress.ip_address("10.9.9.9"), nets)
    assert in_networks(ipaddress.ip_address("2001:db8::1"), nets)
    assert not in_networks(ipaddress.ip_address("192.0.2.1"), nets)  # ::/0 holds no IPv4 address
    assert not in_networks(ipaddress.ip_address("192.0.2.1"), ())


def test_forwarding_header_chains() -> None:
    assert forwarded_chain("x-forwarded-for", "203.0.113.1, 198.51.100.7,,10.0.0.1 ") == [
        "203.0.113.1",
        " 198.51.100.7",
        "10.0.0.1 ",
    ]
    value = 'for=192.0.2.1;proto=https, proto=http;For="[2001:db8::5]:4711", by=10.0.0.1, for = 10.0.0.2'
    assert forwarded_chain("forwarded", value) == ["192.0.2.1", '"[2001:db8::5]:4711"', "10.0.0.2"]
    assert forwarded_chain("forwarded", "proto=https") == []


def test_resolve_client() -> None:
    trusted = _network(trusted_proxies=["10.0.0.0/8"])
    proxy, outsider = ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("192.0.2.9")
    header = {"x-forwarded-for": "203.0.113.1, 198.51.100.7, 10.2.2.2"}
    # From an untrusted peer, or with no proxies configured, the header means nothing.
    assert resolve_client(outsider, header, trusted) == outsider
    assert resolve_client(proxy, header, _network()) == proxy
    # From a trusted proxy: the right-most hop that is not itself a trusted proxy.
    assert str(resolve_client(proxy, header, trusted)) == "198.51.100.7"
    assert resolve_client(proxy, {}, trusted) == proxy  # no header: the proxy is the client
    assert resolve_client(proxy, {"x-forwarded-for": ""}, trusted) == proxy
    # Every hop a trusted proxy: the left-most is the origin.
    assert str(resolve_client(proxy, {"x-forwarded-for": "10.3.3.3, 10.2.2.2"}, trusted)) == "10.3.3.3"
    # A malformed entry right of the client is refused; left of it is ignored.
    assert resolve_client(proxy, {"x-forwarded-for": "198.51.100.7, bogus"}, trusted) is None
    assert str(resolve_client(proxy, {"x-forwarded-for": "bogus, 198.51.100.7"}, trusted)) == "198.51.100.7"


# -- the guard -----------------------------------------------------------------------------------


def test_the_guard_sets_the_client_and_applies_deny_then_allow() -> None:
    guard = ClientIP(_network(allow=["198.51.100.0/24", "::1/128"], deny=["198.51.100.66/32"]))
    err, ip, addr = _client(guard, "198.51.100.7")
    assert err is None and ip == "198.51.100.7" and addr == ipaddress.ip_address("198.51.100.7")
    err, ip, _ = _client(guard, "::1")
    assert err is None and ip == "::1"
    for peer in ("198.51.100.66", "192.0.2.1", "::2"):
        err, ip, _ = _client(guard, peer)
        assert isinstance(err, PermissionDenied) and err.status == 403 and err.code == "ip_not_allowed"
        assert err.message == "Requests from your network are not allowed." and ip == peer


def test_an_ipv4_mapped_peer_is_the_ipv4_client() -> None:
    guard = ClientIP(_network(allow=["127.0.0.0/8"]))
    err, ip, addr = _client(guard, "::ffff:127.0.0.1")
    assert err is None and ip == "127.0.0.1" and addr == ipaddress.ip_address("127.0.0.1")


def test_an_unreadable_peer_is_refused() -> None:
    err, _, addr = _client(ClientIP(_network()), "not-an-address")
    assert isinstance(err, PermissionDenied) and err.code == "ip_not_allowed" and addr is None


def test_forwarding_through_trusted_proxies_only() -> None:
    guard = ClientIP(_network(trusted_proxies=["127.0.0.1/32"], deny=["203.0.113.0/24"]))
    err, ip, _ = _client(guard, "127.0.0.1", **{"X-Forwarded-For": "198.51.100.7"})
    assert err is None and ip == "198.51.100.7"
    err, ip, _ = _client(guard, "127.0.0.1", **{"X-Forwarded-For": "203.0.113.5"})
    assert isinstance(err, PermissionDenied) and ip == "203.0.113.5"
    err, ip, _ = _client(guard, "192.0.2.1", **{"X-Forwarded-For": "198.51.100.7"})
    assert err is None and ip == "192.0.2.1"  # not a trusted proxy: its header is ignored
    err, ip, addr = _client(guard, "127.0.0.1", **{"X-Forwarded-For": "198.51.100.7, nonsense"})
    assert isinstance(err, InvalidRequest) and err.status == 400 and err.code == "bad_forwarding"
    assert ip == "127.0.0.1" and addr is None  # nothing resolved


def test_the_forwarded_header_when_configured() -> None:
    guard = ClientIP(_network(trusted_proxies=["127.0.0.1/32"], forwarded_header="Forwarded"))
    headers = {"Forwarded": 'for=192.0.2.1, for="[2001:db8::5]:4711"', "X-Forwarded-For": "10.0.0.1"}
    err, ip, _ = _client(guard, "127.0.0.1", **headers)
    assert err is None and ip == "2001:db8::5"
    err, ip, _ = _client(guard, "127.0.0.1", **{"X-Forwarded-For": "10.0.0.1"})
    assert err is None and ip == "127.0.0.1"  # the other header is not read


# -- through a real gateway ----------------------------------------------------------------------


def raw_status(gw: Gateway, request: bytes) -> tuple[int, bytes]:
    family = socket.AF_INET6 if ":" in gw.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect((gw.host, gw.port))
        s.sendall(request)
        out = b""
        while b"\r\n\r\n" not in out or not out.rstrip().endswith(b"}"):
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    return int(out.split(b" ", 2)[1]), out


def test_forged_forwarded_for_from_untrusted_peer_changes_nothing(
    tmp_path: Path, upstream: MockUpstream, mock: MockUpstream
) -> None:
    extra = {"network": {"deny": ["203.0.113.0/24"]}}
    with Gateway(tmp_path, upstream.url, extra=extra) as gw:
        key = gw.create_key("k", "--allow-ip", "127.0.0.1/32")["key"]
        other = gw.create_key("o", "--allow-ip", "198.51.100.7/32")["key"]
        # Pretending to come from a denied network does not get us blocked...
        r = post(gw.url, key, **{"X-Forwarded-For": "203.0.113.9", "Forwarded": "for=203.0.113.9"})
        assert r.status_code == 200
        rid = r.headers["x-keygate-request-id"]
        assert gw.wait_entry(lambda e: e["request_id"] == rid)["client_ip"] == "127.0.0.1"
        # ...and pretending to come from an allowed one does not get us in.
        r = post(gw.url, other, **{"X-Forwarded-For": "198.51.100.7"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "ip_not_allowed"
        # Raw request with several forged headers, no client-side normalisation.
        status, _ = raw_status(
            gw,
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + other.encode()
            + b"\r\nX-Forwarded-For: 198.51.100.7\r\nX-Real-IP: 198.51.100.7\r\nForwarded: for=198.51.100.7\r\n"
            b"Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
        )
        assert status == 403
        assert len(mock.requests) == 1


def test_trusted_proxy_right_most_untrusted_hop_is_the_client(
    tmp_path: Path, upstream: MockUpstream, mock: MockUpstream
) -> None:
    extra = {"network": {"trusted_proxies": ["127.0.0.1/32", "10.0.0.0/8"], "deny": ["203.0.113.0/24"]}}
    with Gateway(tmp_path, upstream.url, extra=extra) as gw:
        key = gw.create_key("k", "--allow-ip", "198.51.100.7/32")["key"]
        # client-chosen left part, then the real client, then another trusted proxy
        r = post(gw.url, key, **{"X-Forwarded-For": "127.0.0.9, 203.0.113.1, 198.51.100.7, 10.1.2.3"})
        assert r.status_code == 200
        rid = r.headers["x-keygate-request-id"]
        assert gw.wait_entry(lambda e: e["request_id"] == rid)["client_ip"] == "198.51.100.7"
        # the real client is on the deny list: blocked before authentication
        r = post(gw.url, "not-even-a-key", **{"X-Forwarded-For": "198.51.100.7, 203.0.113.5"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "ip_not_allowed"
        # with no header, the trusted peer itself is the client
        assert post(gw.url, key).status_code == 403
        r = post(gw.url, key, **{"X-Forwarded-For": "198.51.100.7, garbage"})
        assert r.status_code == 400
        assert len(mock.requests) == 1


def test_forwarded_header_when_configured(tmp_path: Path, upstream: MockUpstream, mock: MockUpstream) -> None:
    extra = {"network": {"trusted_proxies": ["127.0.0.1/32"], "forwarded_header": "forwarded"}}
    with Gateway(tmp_path, upstream.url, extra=extra) as gw:
        key = gw.create_key("k", "--allow-ip", "2001:db8::/32")["key"]
        r = post(
            gw.url,
            key,
            Forwarded='for=192.0.2.1;proto=https, for="[2001:db8::5]:4711"',
            **{"X-Forwarded-For": "10.0.0.1"},
        )
        assert r.status_code == 200
        rid = r.headers["x-keygate-request-id"]
        assert gw.wait_entry(lambda e: e["request_id"] == rid)["client_ip"] == "2001:db8::5"
        assert post(gw.url, key, **{"X-Forwarded-For": "2001:db8::5"}).status_code == 403
        assert len(mock.requests) == 1


def test_global_allow_list_before_authentication(
    tmp_path: Path, upstream: MockUpstream, mock: MockUpstream
) -> None:
    with Gateway(tmp_path, upstream.url, extra={"network": {"allow": ["10.0.0.0/8", "::1/128"]}}) as gw:
        key = gw.create_key("k")["key"]
        for k in (key, "bogus"):
            r = post(gw.url, k)
            assert r.status_code == 403 and r.json()["error"]["code"] == "ip_not_allowed"
        assert mock.requests == []


def test_ipv6_listener_allow_deny_and_key_networks(
    tmp_path: Path, upstream: MockUpstream, mock: MockUpstream
) -> None:
    extra = {"network": {"allow": ["::1/128"], "deny": ["127.0.0.0/8"]}}
    with Gateway(tmp_path, upstream.url, extra=extra, host="::1") as gw:
        v6 = gw.create_key("v6", "--allow-ip", "::1/128")["key"]
        v4 = gw.create_key("v4", "--allow-ip", "127.0.0.1/32")["key"]
        client = openai.OpenAI(base_url=gw.url, api_key=v6, max_retries=0)
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.PermissionDeniedError, match="network"):
            openai.OpenAI(base_url=gw.url, api_key=v4, max_retries=0).models.list()
        assert gw.wait_entry(lambda e: e["status"] == 200)["client_ip"] == "::1"
        assert len(mock.requests) == 1
    (tmp_path / "deny6").mkdir()
    with Gateway(tmp_path / "deny6", upstream.url, extra={"network": {"deny": ["::/0"]}}, host="::1") as gw:
        r = post(gw.url, "anything")
        assert r.status_code == 403 and r.json()["error"]["code"] == "ip_not_allowed"
        assert len(mock.requests) == 1
