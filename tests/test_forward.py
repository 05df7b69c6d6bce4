"""keygate.forward in process: a real Forwarder over a real UpstreamPool and SQLite store, against
the mock upstream: which answers are retried on another key (401 and a key-refusing 403 take the key
out, 429 cools it down, 5xx and connection errors retry; any other 403 refuses the request alone)
and how often, where the request goes, the one mapping of transport failures to client errors, and
scrubbing. Then egress TLS through a real gateway: the
upstream certificate is verified, and a per-upstream CA bundle can be trusted."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import http.server
import ipaddress
import logging
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from keygate import http1
from keygate.config import Upstream, load_settings
from keygate.context import Context
from keygate.errors import (
    InvalidRequest,
    KeygateError,
    PermissionDenied,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from keygate.forward import (
    NO_UPSTREAM,
    REJECTED_KEY,
    Answer,
    Forwarder,
    refused_request,
    scrub,
    transport_error,
    upstream_key_rejected,
)
from keygate.store import SQLiteStore
from keygate.testing import MockUpstream, context, key_record
from keygate.types import Secret
from keygate.upstream_pool import UpstreamPool

from .certs import CA
from .helpers import UPSTREAM_SECRET, Gateway, assert_no_secret_written

K1 = "sk-proj-FWD-key-one-1111111111111111"
K2 = "sk-proj-FWD-key-two-2222222222222222"
K3 = "sk-proj-FWD-key-three-333333333333333"
ENV = {"K1": K1, "K2": K2, "K3": K3, "KEYGATE_PEPPER": "p" * 40}
CHAT: dict[str, Any] = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


class Setup:
    """A Forwarder and its pool, built from a config file as the server builds them."""

    def __init__(self, tmp_path: Path, upstreams: dict[str, Any], retries: int = 2) -> None:
        cfg = tmp_path / "keygate.yaml"
        config = {"database_url": "sqlite:///kg.db", "upstreams": upstreams, "upstream_retries": retries}
        cfg.write_text(yaml.safe_dump(config))
        self.settings = load_settings(cfg, ENV)
        self.store = SQLiteStore(self.settings.database_path, audit_key=b"t" * 32)
        self.store.migrate()
        self.pool = UpstreamPool(self.settings, self.store, None)
        self.forwarder = Forwarder(self.settings, self.pool)

    def forward(self, ctx: Context) -> tuple[int, bytes] | KeygateError:
        """One request: the status and whole body that would reach the client, or the error."""

        async def go() -> tuple[int, bytes] | KeygateError:
            try:
                found = await self.forwarder.open(ctx)
                if isinstance(found, KeygateError):
                    return found
                try:
                    body = await found.response.read_all() if found.streamed else found.response.body
                    return found.response.status, body
                finally:
                    found.close()
            finally:
                self.forwarder.close()

        return asyncio.run(go())

    def in_flight(self) -> int:
        return sum(k.in_flight for e in self.pool._entries.values() for k in e.keys)

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def make(tmp_path: Path, mock: MockUpstream) -> Iterator[Any]:
    mock.set_api_keys([K1, K2, K3])
    made: list[Setup] = []

    def build(keys: int = 2, retries: int = 2, fallback: str | None = None, **more: Any) -> Setup:
        refs = [f"${{K{i + 1}}}" for i in range(keys)]
        first: dict[str, Any] = {"base_url": mock.url, "api_keys": refs}
        if fallback is not None:
            first["fallback"] = fallback
        upstreams = {"openai": first, **more}
        (tmp_path / str(len(made))).mkdir()
        made.append(Setup(tmp_path / str(len(made)), upstreams, retries))
        return made[-1]

    yield build
    for s in made:
        s.close()


def bearers(mock: MockUpstream) -> list[str]:
    return [r.headers["authorization"].removeprefix("Bearer ") for r in mock.requests]


def models() -> Context:
    return context("GET", "/v1/models", key=key_record())


# --- what is retried, and how often ---------------------------------------------------------------


@pytest.mark.parametrize("status", ["401", "403"])
def test_a_rejected_key_leaves_the_rotation_and_the_request_is_retried(
    make: Any, mock: MockUpstream, records: list[logging.LogRecord], status: str
) -> None:
    s = make()
    if status == "401":
        mock.fail_next(status)
    else:
        mock.reply_next(403, {"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}})
    assert s.forward(models())[0] == 200  # type: ignore[index]
    first, second = bearers(mock)
    assert first != second and {first, second} <= {K1, K2}
    alerts = [r for r in records if r.name == "keygate.alert"]
    assert [getattr(r, "upstream_status", None) for r in alerts] == [int(status)]
    mock.reset()
    for _ in range(4):
        assert s.forward(models())[0] == 200  # type: ignore[index]
    assert bearers(mock) == [second] * 4  # the rejected key is out
    assert s.in_flight() == 0


@pytest.mark.parametrize("stream", [False, True])
def test_a_403_for_the_request_is_not_retried_and_keeps_the_key(
    make: Any, mock: MockUpstream, records: list[logging.LogRecord], stream: bool
) -> None:
    s = make(3, 2, fallback="spare", spare={"base_url": mock.url, "api_key": "${K3}"})
    refused = {
        "error": {"message": f"Project proj_x may not use o1-pro ({K1} {K2})", "code": "model_not_found"}
    }
    mock.reply_next(403, refused, count=5)
    body = {**CHAT, "stream": True} if stream else CHAT
    ctx = context("POST", "/v1/chat/completions", json=body, key=key_record())
    assert ctx.stream is stream

    async def go() -> Answer | KeygateError:
        try:
            return await s.forwarder.open(ctx)
        finally:
            s.forwarder.close()

    found = asyncio.run(go())
    assert isinstance(found, Answer) and found.response.status == 403
    assert isinstance(found.refusal, PermissionDenied) and found.refusal.code == "model_not_found"
    assert K1 not in found.refusal.message and "proj_x" not in found.refusal.message
    found.close()
    assert len(mock.requests) == 1 and s.in_flight() == 0
    assert not [r for r in records if r.name == "keygate.alert"]
    assert not any(k.disabled for e in s.pool._entries.values() for k in e.keys)


@pytest.mark.parametrize(
    ("body", "refused", "code"),
    [
        (b'{"error":{"code":"invalid_api_key","message":"Incorrect API key provided"}}', False, None),
        (b'{"error":{"code":"account_deactivated"}}', False, None),
        (b'{"error":{"code":"no_organization"}}', False, None),
        (
            b'{"error":{"code":null,"type":"access_terminated","message":"Your access was terminated"}}',
            False,
            None,
        ),
        (b'{"error":{"code":"model_not_found","type":"invalid_request_error"}}', True, "model_not_found"),
        (
            b'{"error":{"code":"unsupported_country_region_territory"}}',
            True,
            "unsupported_country_region_territory",
        ),
        (b'{"error":{"code":"insufficient_permissions"}}', True, "insufficient_permissions"),
        (b'{"error":{"code":"Some Code!"}}', True, "upstream_forbidden"),  # not a plain code: not repeated
        (
            b'{"error":{"code":"403","message":"Access denied due to Virtual Network/Firewall rules."}}',
            True,
            "403",
        ),
        (b"<html>403 Forbidden</html>", True, "upstream_forbidden"),
        (b"", True, "upstream_forbidden"),
        (b'{"error":"forbidden"}', True, "upstream_forbidden"),
        (b"[1]", True, "upstream_forbidden"),
    ],
)
def test_refused_request_tells_a_refused_request_from_a_refused_key(
    body: bytes, refused: bool, code: str | None
) -> None:
    response = http1.Response(None, 403, [("x-request-id", "req_1"), ("content-type", "text/html")])  # type: ignore[arg-type]
    response.body = body
    err = refused_request(response)
    if not refused:
        assert err is None
        return
    assert isinstance(err, PermissionDenied) and (err.status, err.type, err.code) == (
        403,
        "permission_denied",
        code,
    )
    assert ("x-request-id", "req_1") in err.headers
    assert "Forbidden" not in err.message and "Firewall" not in err.message  # keygate's words, not theirs


def test_a_429_cools_the_key_down_and_the_request_is_retried(make: Any, mock: MockUpstream) -> None:
    s = make()
    mock.fail_next("429", retry_after=30)
    assert s.forward(models())[0] == 200  # type: ignore[index]
    cooled, other = bearers(mock)
    assert cooled != other
    mock.reset()
    for _ in range(4):
        s.forward(models())
    assert bearers(mock) == [other] * 4


@pytest.mark.parametrize("mode", ["500", "503", "disconnect"])
def test_5xx_and_connection_errors_retry_on_another_key(make: Any, mock: MockUpstream, mode: str) -> None:
    s = make()
    mock.fail_next(mode)
    assert s.forward(models())[0] == 200  # type: ignore[index]
    first, second = bearers(mock)
    assert first != second
    mock.reset()
    s.forward(models())
    s.forward(models())
    assert set(bearers(mock)) == {K1, K2}  # neither key was taken out
    assert s.in_flight() == 0


@pytest.mark.parametrize(("keys", "retries", "attempts"), [(3, 0, 1), (3, 1, 2), (3, 2, 3), (2, 5, 2)])
def test_retries_are_bounded_by_upstream_retries_and_by_the_keys(
    make: Any, mock: MockUpstream, keys: int, retries: int, attempts: int
) -> None:
    s = make(keys, retries)
    mock.fail_always("500")
    found = s.forward(models())
    assert not isinstance(found, KeygateError)
    assert found[0] == 500 and b"server_error" in found[1]  # the last answer, as it is
    assert len(bearers(mock)) == len(set(bearers(mock))) == attempts  # each attempt on another key


def test_connection_errors_on_every_attempt_are_a_502(make: Any, mock: MockUpstream) -> None:
    s = make(2, 3)
    mock.fail_always("disconnect")
    err = s.forward(models())
    assert isinstance(err, UpstreamError) and (err.status, err.code) == (502, "upstream_connection_error")
    assert len(mock.requests) == 2
    assert s.in_flight() == 0


def test_other_4xx_answers_are_not_retried(make: Any, mock: MockUpstream) -> None:
    s = make()
    found = s.forward(context("GET", "/v1/models/no-such-model", key=key_record()))
    assert found[0] == 404 and b"model_not_found" in found[1]  # type: ignore[index]
    found = s.forward(context("POST", "/v1/chat/completions", json={"messages": []}, key=key_record()))
    assert found[0] == 400 and b"model parameter" in found[1]  # type: ignore[index]
    assert len(mock.requests) == 2


def test_a_stream_is_retried_only_before_it_is_relayed(make: Any, mock: MockUpstream) -> None:
    s = make()
    ctx = context("POST", "/v1/chat/completions", json={**CHAT, "stream": True}, key=key_record())
    assert ctx.stream
    mock.fail_next("503")
    found = s.forward(ctx)
    assert not isinstance(found, KeygateError)
    assert found[0] == 200 and found[1].endswith(b"data: [DONE]\n\n")
    assert len(mock.requests) == 2 and s.in_flight() == 0


def test_a_fallback_upstream_takes_over_when_every_key_is_out(make: Any, mock: MockUpstream) -> None:
    s = make(1, 2, fallback="spare", spare={"base_url": mock.url, "api_key": "${K3}"})
    ctx = models()
    mock.fail_next("401")
    assert s.forward(ctx)[0] == 200  # type: ignore[index]
    assert bearers(mock) == [K1, K3]
    assert ctx.upstream is not None and ctx.upstream.name == "spare"  # where it went, for the record


def test_cancelling_an_attempt_releases_its_lease(make: Any, mock: MockUpstream) -> None:
    s = make()
    mock.fail_next("slow", delay=2.0)

    async def go() -> None:
        task = asyncio.ensure_future(s.forwarder.open(models()))
        while not mock.requests:
            await asyncio.sleep(0.01)
        assert s.in_flight() == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        s.forwarder.close()

    asyncio.run(go())
    assert s.in_flight() == 0


# --- where the request goes -----------------------------------------------------------------------


def test_the_target_is_the_base_url_plus_the_route(make: Any, mock: MockUpstream) -> None:
    s = make()
    ctx = context("GET", "/v1/models", key=key_record(), headers={"Cookie": "a=b", "OpenAI-Beta": "x"})
    ctx.path = "http://evil.example/steal"  # only the matched route counts
    ctx.query = "limit=2"  # as the app leaves it: written by routes.canonical_query
    assert s.forward(ctx)[0] == 200  # type: ignore[index]
    (seen,) = mock.requests
    assert (seen.method, seen.path, seen.query) == ("GET", "/v1/models", "limit=2")
    assert seen.headers["host"] == f"127.0.0.1:{mock.port}"
    assert "cookie" not in seen.headers and seen.headers["openai-beta"] == "x"
    assert ctx.upstream is not None and ctx.upstream.name == "openai"


def test_a_key_pinned_to_an_upstream_goes_there(make: Any, mock: MockUpstream) -> None:
    s = make(1, spare={"base_url": mock.url, "api_key": "${K3}"})
    ctx = context("GET", "/v1/models", key=key_record(upstream="spare"))
    assert s.forward(ctx)[0] == 200  # type: ignore[index]
    assert bearers(mock) == [K3] and ctx.upstream is not None and ctx.upstream.name == "spare"


def test_an_unknown_or_keyless_upstream_is_an_error_without_a_request(make: Any, mock: MockUpstream) -> None:
    s = make(1, spare={"base_url": mock.url, "api_key": "${UNSET}"})
    assert s.forward(context("GET", "/v1/models", key=key_record(upstream="nowhere"))) is NO_UPSTREAM
    assert (NO_UPSTREAM.status, NO_UPSTREAM.code) == (500, "no_upstream")
    err = s.forward(context("GET", "/v1/models", key=key_record(upstream="spare")))
    assert isinstance(err, UpstreamUnavailable) and err.status == 503
    assert mock.requests == []


def test_a_header_with_a_line_break_is_a_400_and_is_not_retried(make: Any, mock: MockUpstream) -> None:
    s = make()
    ctx = context("GET", "/v1/models", key=key_record(), headers={"OpenAI-Beta": "x\r\nx-evil: 1"})
    err = s.forward(ctx)
    assert isinstance(err, InvalidRequest)
    assert (err.status, err.code) == (400, "invalid_request_header")
    assert mock.requests == [] and s.in_flight() == 0


def test_a_failure_before_sending_releases_the_lease(tmp_path: Path, mock: MockUpstream) -> None:
    """Whatever fails once a key is leased, the lease is given back (else the key counts one more
    request in flight forever, which least_in_flight and the pool's view of the key both read)."""
    (tmp_path / "ca.pem").write_bytes(CA("test-ca").pem())  # a bundle that loads, so the config loads
    upstream = {
        "base_url": "https://127.0.0.1:9/v1",
        "api_key": "${K1}",
        "ca_bundle": str(tmp_path / "ca.pem"),
    }
    s = Setup(tmp_path, {"openai": upstream})
    # ... and is broken by the time the first request makes the TLS context
    (tmp_path / "ca.pem").write_text("not a certificate")
    try:
        with contextlib.suppress(ssl.SSLError):  # raised today; an error answer would do as well
            s.forward(models())
        assert s.in_flight() == 0
    finally:
        s.close()


# --- transport_error, upstream_key_rejected, scrub ------------------------------------------------

UP = Upstream("primary", "https://api.example/v1", "${K}", None)


@pytest.mark.parametrize(
    ("exc", "kind", "status", "code"),
    [
        (http1.ConnectTimeout("t"), UpstreamTimeout, 504, "upstream_connect_timeout"),
        (http1.ResponseTimeout("t"), UpstreamTimeout, 504, "upstream_timeout"),
        (http1.ConnectFailed("refused"), UpstreamError, 502, "upstream_connect_failed"),
        (http1.TransportError("closed"), UpstreamError, 502, "upstream_connection_error"),
        (http1.InvalidRequest("a header holds a line break"), InvalidRequest, 400, "invalid_request_header"),
    ],
)
def test_transport_error_mapping(
    records: list[logging.LogRecord], exc: http1.TransportError, kind: type, status: int, code: str
) -> None:
    err = transport_error(exc, UP)
    assert type(err) is kind and (err.status, err.code) == (status, code)
    logged = [r for r in records if r.getMessage() == "upstream request failed"]
    if isinstance(exc, http1.InvalidRequest):
        # The client's own mistake: named in the answer, not an upstream failure to log.
        assert str(exc) in err.message and logged == []
    else:
        assert [(r.upstream, r.error, r.detail) for r in logged] == [
            ("primary", type(exc).__name__, str(exc))
        ]  # type: ignore[attr-defined]


def test_upstream_key_rejected_hides_the_answer_and_alerts(records: list[logging.LogRecord]) -> None:
    assert upstream_key_rejected(UP, 403) is REJECTED_KEY
    assert (REJECTED_KEY.status, REJECTED_KEY.code) == (502, "upstream_auth_failed")
    (logged,) = records
    assert logged.levelno == logging.ERROR
    assert (logged.upstream, logged.upstream_status) == ("primary", 403)  # type: ignore[attr-defined]


def test_scrub_removes_the_key_that_was_used() -> None:
    key = Secret("sk-live-0123456789abcdef")
    body = b'{"error":{"message":"key sk-live-0123456789abcdef is over quota"}}'
    assert scrub(body, key) == b'{"error":{"message":"key [redacted] is over quota"}}'
    assert scrub(b'{"ok":1}', key) == b'{"ok":1}'
    assert scrub(b"sk-live-0123456789abcdef,sk-live-0123456789abcdef", key) == b"[redacted],[redacted]"
    assert scrub(b"anything", Secret("")) == b"anything"


def test_answer_close_releases_the_lease(make: Any, mock: MockUpstream) -> None:
    s = make()

    async def go() -> None:
        found = await s.forwarder.open(models())
        assert isinstance(found, Answer) and not found.streamed
        assert s.in_flight() == 1
        found.close()
        s.forwarder.close()

    asyncio.run(go())
    assert s.in_flight() == 0


# --- egress TLS, through a real gateway -----------------------------------------------------------


def _cert(subject: str, key: Any, issuer: x509.Name | None, issuer_key: Any, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture
def tls_upstream(tmp_path: Path) -> Iterator[tuple[str, Path, list[str]]]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("keygate test CA", ca_key, None, ca_key, ca=True)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = _cert("127.0.0.1", leaf_key, ca.subject, ca_key, ca=False)
    certs = tmp_path / "tls"
    certs.mkdir()
    (certs / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (certs / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (certs / "leaf.key").write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("authorization", ""))
            body = b'{"object": "list", "data": []}'
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs / "leaf.pem", certs / "leaf.key")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/v1", certs / "ca.pem", seen
    finally:
        server.shutdown()
        server.server_close()


def test_untrusted_certificate_is_refused(tmp_path: Path, tls_upstream: tuple[str, Path, list[str]]) -> None:
    url, _, seen = tls_upstream
    (tmp_path / "gw").mkdir()
    with Gateway(tmp_path / "gw", url) as gw:
        r = httpx.get(f"{gw.url}/models", headers={"Authorization": f"Bearer {gw.create_key()['key']}"})
    assert r.status_code == 502 and seen == []
    assert UPSTREAM_SECRET not in r.text
    assert_no_secret_written(gw.written_files(), gw.secrets)


def test_per_upstream_ca_bundle_is_trusted(tmp_path: Path, tls_upstream: tuple[str, Path, list[str]]) -> None:
    url, ca, seen = tls_upstream
    (tmp_path / "gw").mkdir()
    extra = {"upstreams": {"openai": {"base_url": url, "api_key": "${OPENAI_API_KEY}", "ca_bundle": str(ca)}}}
    with Gateway(tmp_path / "gw", url, extra=extra) as gw:
        r = httpx.get(f"{gw.url}/models", headers={"Authorization": f"Bearer {gw.create_key()['key']}"})
    assert r.status_code == 200 and r.json()["object"] == "list"
    assert seen == [f"Bearer {UPSTREAM_SECRET}"]
    assert_no_secret_written(gw.written_files(), gw.secrets)
