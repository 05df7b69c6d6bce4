"""``keygate.outbound``: the one policy for keygate's own outbound calls (webhooks, JWKS,
introspection, the CLI's remote admin API): no redirects, nothing from the environment (proxies,
CA files), certificates verified, timeouts on everything."""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from keygate import outbound
from keygate.testing import MockUpstream

from .certs import CA
from .helpers import Gateway

CHAT: dict[str, Any] = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


class _Recorder:
    """An HTTP server that records what reaches it and answers with ``status`` (and ``location``);
    as a proxy it would see absolute request targets or CONNECT."""

    def __init__(
        self, status: int = 204, location: str | None = None, tls: ssl.SSLContext | None = None
    ) -> None:
        self.hits: list[tuple[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                outer.hits.append((self.command, self.path))
                self.send_response(status)
                if location:
                    self.send_header("location", location)
                self.send_header("content-length", "0")
                self.end_headers()

            do_GET = do_POST = do_CONNECT = _any

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server.server_port}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def servers() -> Iterator[tuple[_Recorder, _Recorder, _Recorder]]:
    """A target, a redirector to the target, and a would-be proxy."""
    target = _Recorder()
    redirector = _Recorder(307, target.url)
    proxy = _Recorder(502)
    yield target, redirector, proxy
    for server in (target, redirector, proxy):
        server.close()


def _proxied_env(monkeypatch: pytest.MonkeyPatch, proxy: _Recorder) -> None:
    for name in PROXY_VARS:
        monkeypatch.setenv(name, proxy.url.rsplit("/", 1)[0])
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)


def test_the_sync_client_follows_no_redirect_and_no_proxy(
    servers: tuple[_Recorder, _Recorder, _Recorder], monkeypatch: pytest.MonkeyPatch
) -> None:
    target, redirector, proxy = servers
    _proxied_env(monkeypatch, proxy)
    with outbound.sync_client(redirector.url.rsplit("/", 1)[0], {"authorization": "Bearer kga_x"}) as client:
        r = client.post("/hook", json={"a": 1})
    assert r.status_code == 307 and r.headers["location"] == target.url
    assert redirector.hits == [("POST", "/hook")] and target.hits == [] and proxy.hits == []


def test_the_async_client_follows_no_redirect_and_no_proxy(
    servers: tuple[_Recorder, _Recorder, _Recorder], monkeypatch: pytest.MonkeyPatch
) -> None:
    target, redirector, proxy = servers
    _proxied_env(monkeypatch, proxy)

    async def call() -> httpx.Response:
        async with outbound.async_client() as client:
            return await client.post(redirector.url, json={"event": "budget"})

    assert asyncio.run(call()).status_code == 307
    assert redirector.hits == [("POST", "/hook")] and target.hits == [] and proxy.hits == []


def test_certificates_are_verified_and_no_ca_file_is_taken_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = CA("outbound test ca")
    cert, key = ca.issue("localhost", server=True)
    (tmp_path / "server.crt").write_bytes(cert)
    (tmp_path / "server.key").write_bytes(key)
    (tmp_path / "ca.pem").write_bytes(ca.pem())
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(tmp_path / "server.crt", tmp_path / "server.key")
    server = _Recorder(204, tls=tls)
    try:
        # The server's CA, offered through the environment, is not trusted: only the system's are.
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
        monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path))
        with (
            outbound.sync_client(server.url.rsplit("/", 1)[0], {}) as client,
            pytest.raises(httpx.ConnectError),
        ):
            client.get("/hook")

        async def call() -> None:
            async with outbound.async_client() as client:
                await client.get(server.url)

        with pytest.raises(httpx.ConnectError):
            asyncio.run(call())
        # The same server is reachable once its CA is trusted explicitly: the refusals above were
        # about the certificate, nothing else.
        assert (
            httpx.get(
                server.url, verify=ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
            ).status_code
            == 204
        )
    finally:
        server.close()


def test_every_call_has_a_connect_and_an_overall_timeout() -> None:
    with outbound.sync_client("https://admin.example", {"x-test": "1"}) as client:
        assert (client.timeout.connect, client.timeout.read, client.timeout.write, client.timeout.pool) == (
            10.0,
            30.0,
            30.0,
            30.0,
        )
        assert client.base_url == httpx.URL("https://admin.example") and client.headers["x-test"] == "1"
        assert client.follow_redirects is False and client.trust_env is False
    with outbound.sync_client("https://admin.example", {}, timeout=4.0) as short:
        assert (short.timeout.connect, short.timeout.read) == (4.0, 4.0)
    client_async = outbound.async_client()
    assert (client_async.timeout.connect, client_async.timeout.read) == (5.0, 10.0)
    assert client_async.follow_redirects is False and client_async.trust_env is False
    asyncio.run(client_async.aclose())
    other = outbound.async_client(connect_timeout=1.0, timeout=2.0)
    assert (other.timeout.connect, other.timeout.read) == (1.0, 2.0)
    asyncio.run(other.aclose())


def test_bug5_webhook_follows_no_redirect_and_no_proxy(tmp_path: Path, mock: MockUpstream) -> None:
    """Regression (issue 10, bug 5): the budget webhook goes to its URL only, never via a proxy."""
    target = _Recorder()
    redirector = _Recorder(302, target.url)
    proxy = _Recorder(502)
    limits = {
        "soft_threshold": 0.01,
        "default_max_output_tokens": 1,
        "webhook_url": redirector.url,
    }
    env = {"http_proxy": proxy.url, "HTTP_PROXY": proxy.url, "no_proxy": "", "NO_PROXY": ""}
    with Gateway(tmp_path, mock.url, extra={"limits": limits}, env=env) as gw:
        key = gw.create_key("hooked", "--budget-tokens", "100/day")["key"]
        client = openai.OpenAI(base_url=gw.url, api_key=key, max_retries=0)
        client.chat.completions.create(**CHAT)
        deadline = time.monotonic() + 10
        while not redirector.hits and not proxy.hits and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.1)  # time enough for a followed redirect to arrive, were it followed
    assert proxy.hits == []
    assert [m for m, _ in redirector.hits] == ["POST"]
    assert target.hits == []
