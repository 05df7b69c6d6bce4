"""Network rules before authentication: client IP resolution, allow/deny lists, IPv6, lockout."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import openai
import pytest

from keygate.testing import MockUpstream

from ..helpers import Gateway

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def post(gw: Gateway, key: str, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{gw.url}/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}", **headers}
    )


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
        r = post(gw, key, **{"X-Forwarded-For": "203.0.113.9", "Forwarded": "for=203.0.113.9"})
        assert r.status_code == 200
        rid = r.headers["x-keygate-request-id"]
        assert gw.wait_entry(lambda e: e["request_id"] == rid)["client_ip"] == "127.0.0.1"
        # ...and pretending to come from an allowed one does not get us in.
        r = post(gw, other, **{"X-Forwarded-For": "198.51.100.7"})
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
        r = post(gw, key, **{"X-Forwarded-For": "127.0.0.9, 203.0.113.1, 198.51.100.7, 10.1.2.3"})
        assert r.status_code == 200
        rid = r.headers["x-keygate-request-id"]
        assert gw.wait_entry(lambda e: e["request_id"] == rid)["client_ip"] == "198.51.100.7"
        # the real client is on the deny list: blocked before authentication
        r = post(gw, "not-even-a-key", **{"X-Forwarded-For": "198.51.100.7, 203.0.113.5"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "ip_not_allowed"
        # with no header, the trusted peer itself is the client
        assert post(gw, key).status_code == 403
        r = post(gw, key, **{"X-Forwarded-For": "198.51.100.7, garbage"})
        assert r.status_code == 400
        assert len(mock.requests) == 1


def test_forwarded_header_when_configured(tmp_path: Path, upstream: MockUpstream, mock: MockUpstream) -> None:
    extra = {"network": {"trusted_proxies": ["127.0.0.1/32"], "forwarded_header": "forwarded"}}
    with Gateway(tmp_path, upstream.url, extra=extra) as gw:
        key = gw.create_key("k", "--allow-ip", "2001:db8::/32")["key"]
        r = post(
            gw,
            key,
            Forwarded='for=192.0.2.1;proto=https, for="[2001:db8::5]:4711"',
            **{"X-Forwarded-For": "10.0.0.1"},
        )
        assert r.status_code == 200
        rid = r.headers["x-keygate-request-id"]
        assert gw.wait_entry(lambda e: e["request_id"] == rid)["client_ip"] == "2001:db8::5"
        assert post(gw, key, **{"X-Forwarded-For": "2001:db8::5"}).status_code == 403
        assert len(mock.requests) == 1


def test_global_allow_list_before_authentication(
    tmp_path: Path, upstream: MockUpstream, mock: MockUpstream
) -> None:
    with Gateway(tmp_path, upstream.url, extra={"network": {"allow": ["10.0.0.0/8", "::1/128"]}}) as gw:
        key = gw.create_key("k")["key"]
        for k in (key, "bogus"):
            r = post(gw, k)
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
        r = post(gw, "anything")
        assert r.status_code == 403 and r.json()["error"]["code"] == "ip_not_allowed"
        assert len(mock.requests) == 1


def test_brute_force_lockout(tmp_path: Path, upstream: MockUpstream, mock: MockUpstream) -> None:
    extra = {"network": {"lockout": {"max_failures": 3, "window": 60, "duration": 600}}}
    with Gateway(tmp_path, upstream.url, extra=extra) as gw:
        key = gw.create_key("k")["key"]
        for bad in ("kg_" + "A" * 38, "nope", "eyJ.bad"):
            assert post(gw, bad).status_code == 401
        # the right key now gets 429 too: the address is locked out
        r = post(gw, key)
        assert r.status_code == 429 and r.json()["error"]["code"] == "auth_locked_out"
        assert 500 <= int(r.headers["retry-after"]) <= 600
        assert mock.requests == []
        gw.stop()
        log = (tmp_path / "stderr.log").read_text()
        assert log.count("client locked out") == 1 and '"client_ip": "127.0.0.1"' in log.replace(
            '":"', '": "'
        )


def test_successes_do_not_count_towards_lockout(
    tmp_path: Path, upstream: MockUpstream, mock: MockUpstream
) -> None:
    extra = {"network": {"lockout": {"max_failures": 2}}}
    with Gateway(tmp_path, upstream.url, extra=extra) as gw:
        key = gw.create_key("k")["key"]
        assert post(gw, "bad").status_code == 401
        for _ in range(3):
            assert post(gw, key).status_code == 200
        assert post(gw, "bad").status_code == 401
        assert post(gw, key).status_code == 429
