"""keygate.tls through a real `keygate serve` process (SIGHUP reload needs one): TLS and mTLS
termination, protocol floor, strong ciphers only, HSTS, client certificates, reload."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import openai
import pytest
from cryptography import x509
from granian.constants import SSLProtocols

from keygate.access_config import TLSSettings
from keygate.errors import ConfigError
from keygate.testing import MockUpstream
from keygate.tls import CertWatcher, check_pair, confirm_reload, hsts_headers, server_options, tls_from_flags

from .certs import CA
from .helpers import ProcessGateway

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


class TLSGateway(ProcessGateway):
    """A gateway started with ``serve --tls-cert ... [--client-ca ...]`` on the command line."""

    def __init__(self, workdir: Path, upstream_url: str, serve_args: list[str], **kw: object) -> None:
        super().__init__(workdir, upstream_url, **kw)  # type: ignore[arg-type]
        self.serve_args = serve_args

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/v1"


def client_ctx(ca: CA, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=ca.pem().decode())
    if cert is not None:
        ctx.load_cert_chain(*cert)
    return ctx


def handshake(gw: ProcessGateway, ctx: ssl.SSLContext) -> tuple[str | None, x509.Certificate]:
    with (
        socket.create_connection(("127.0.0.1", gw.port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return tls.version(), x509.load_der_x509_certificate(der)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[CA, Path]:
    work = tmp_path_factory.mktemp("pki")
    ca = CA("keygate test CA")
    (work / "ca.crt").write_bytes(ca.pem())
    ca.write(work, "server", "keygate-1", server=True)
    return ca, work


@pytest.fixture(scope="module")
def tls_gw(
    pki: tuple[CA, Path], upstream: MockUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProcessGateway]:
    _, work = pki
    args = ["--tls-cert", str(work / "server.crt"), "--tls-key", str(work / "server.key")]
    with TLSGateway(tmp_path_factory.mktemp("tls"), upstream.url, args) as gw:
        yield gw


def test_https_with_the_sdk_and_hsts(
    tls_gw: ProcessGateway, pki: tuple[CA, Path], mock: MockUpstream
) -> None:
    ca, _ = pki
    key = tls_gw.create_key("tls")["key"]
    http = httpx.Client(verify=client_ctx(ca))
    client = openai.OpenAI(base_url=tls_gw.url, api_key=key, max_retries=0, http_client=http)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.parse().choices[0].message.content
    assert raw.headers["strict-transport-security"].startswith("max-age=31536000")
    err = http.get(f"{tls_gw.url}/models")  # errors carry HSTS too
    assert err.status_code == 401 and "strict-transport-security" in err.headers
    assert len(mock.requests) == 1


def test_plain_http_is_not_served(tls_gw: ProcessGateway, mock: MockUpstream) -> None:
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{tls_gw.port}/v1/models", timeout=5)
    assert mock.requests == []


def test_tls13_preferred_tls12_allowed_older_refused(tls_gw: ProcessGateway, pki: tuple[CA, Path]) -> None:
    ca, _ = pki
    assert handshake(tls_gw, client_ctx(ca))[0] == "TLSv1.3"
    ctx12 = client_ctx(ca)
    ctx12.maximum_version = ssl.TLSVersion.TLSv1_2
    assert handshake(tls_gw, ctx12)[0] == "TLSv1.2"
    old = client_ctx(ca)
    with pytest.warns(DeprecationWarning):
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    with contextlib.suppress(ssl.SSLError):
        old.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises((ssl.SSLError, OSError)):
        handshake(tls_gw, old)


def test_weak_ciphers_refused(tls_gw: ProcessGateway, pki: tuple[CA, Path]) -> None:
    ca, _ = pki
    tried = 0
    for weak in ("ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384", "AES128-SHA", "DES-CBC3-SHA"):
        ctx = client_ctx(ca)
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.set_ciphers(weak + ":@SECLEVEL=0")
        except ssl.SSLError:
            continue  # this OpenSSL cannot even offer it
        tried += 1
        with pytest.raises((ssl.SSLError, OSError)):
            handshake(tls_gw, ctx)
    assert tried >= 2


def test_mtls_requires_a_client_certificate_from_the_ca(
    pki: tuple[CA, Path], upstream: MockUpstream, mock: MockUpstream, tmp_path: Path
) -> None:
    ca, work = pki
    good = ca.write(tmp_path, "client", "good-client", server=False)
    stranger = CA("some other CA").write(tmp_path, "stranger", "bad-client", server=False)
    args = [
        "--tls-cert",
        str(work / "server.crt"),
        "--tls-key",
        str(work / "server.key"),
        "--client-ca",
        str(work / "ca.crt"),
    ]
    with TLSGateway(tmp_path, upstream.url, args) as gw:
        key = gw.create_key("m")["key"]
        headers = {"Authorization": f"Bearer {key}"}
        ok = httpx.post(f"{gw.url}/chat/completions", json=CHAT, headers=headers, verify=client_ctx(ca, good))
        assert ok.status_code == 200
        for ctx in (client_ctx(ca), client_ctx(ca, stranger)):
            with pytest.raises(httpx.HTTPError):
                httpx.post(f"{gw.url}/chat/completions", json=CHAT, headers=headers, verify=ctx, timeout=5)
        assert len(mock.requests) == 1


def test_certificate_reload_on_sighup_and_on_change_without_dropping(
    pki: tuple[CA, Path], upstream: MockUpstream, mock: MockUpstream, tmp_path: Path
) -> None:
    ca, _ = pki
    cert, key = ca.write(tmp_path, "srv", "generation-1", server=True)
    extra = {"tls": {"cert": str(cert), "key": str(key), "watch_interval": 0.2}}
    with ProcessGateway(tmp_path, upstream.url, extra=extra) as gw:
        gw_url = f"https://127.0.0.1:{gw.port}/v1"
        api_key = gw.create_key("r")["key"]
        ctx = client_ctx(ca)

        def serving_cn() -> str:
            return handshake(gw, ctx)[1].subject.rfc4514_string()

        def reloads() -> int:
            return (tmp_path / "stderr.log").read_text().count("TLS certificates reloaded")

        assert serving_cn() == "CN=generation-1"
        # A slow stream in flight across both reloads must finish.
        mock.fail_next("slow", delay=0.4)
        streamed: list[str] = []

        def stream() -> None:
            client = openai.OpenAI(
                base_url=gw_url, api_key=api_key, max_retries=0, http_client=httpx.Client(verify=ctx)
            )
            for chunk in client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True
            ):
                if chunk.choices:
                    streamed.append(chunk.choices[0].delta.content or "")

        t = threading.Thread(target=stream)
        t.start()
        # 1. SIGHUP after replacing the files in place
        new_cert, new_key = ca.issue("generation-2", server=True)
        key.write_bytes(new_key)
        cert.write_bytes(new_cert)
        assert gw.proc is not None
        # Traffic all through the reload, as applications send it: the official SDK, whose
        # automatic retry covers the one race no server can close (a fresh connection accepted by
        # the old worker in the instant it stops; see docs/access-control.md).
        sdk_client = openai.OpenAI(base_url=gw_url, api_key=api_key, http_client=httpx.Client(verify=ctx))
        os.kill(gw.proc.pid, signal.SIGHUP)
        served = 0
        deadline = time.monotonic() + 20
        while reloads() < 1 and time.monotonic() < deadline:
            assert sdk_client.models.list().data  # raises on any failure that survived the retry
            served += 1
        assert served > 0
        assert [serving_cn() for _ in range(5)] == ["CN=generation-2"] * 5
        t.join(30)
        assert "".join(streamed).replace(" ", "") == "Hellofrommock"
        # 2. the watcher notices a change by itself
        new_cert, new_key = ca.issue("generation-3", server=True)
        key.write_bytes(new_key)
        cert.write_bytes(new_cert)
        deadline = time.monotonic() + 20
        while reloads() < 2 and time.monotonic() < deadline:
            assert sdk_client.models.list().data
        assert [serving_cn() for _ in range(5)] == ["CN=generation-3"] * 5
        # 3. a broken pair (key of another certificate) is refused; the server keeps serving
        key.write_bytes(ca.issue("unrelated", server=True)[1])
        os.kill(gw.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 20
        while "do not load" not in (tmp_path / "stderr.log").read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert serving_cn() == "CN=generation-3" and reloads() == 2


# --- keygate.tls in process: flags, server options, HSTS, and the certificate watcher -------------


def _settings(
    cert: Path | None = None, key: Path | None = None, ca: Path | None = None, **kw: Any
) -> TLSSettings:
    return TLSSettings(cert=cert, key=key, client_ca=ca, **kw)


def test_tls_from_flags(pki: tuple[CA, Path]) -> None:
    _, work = pki
    crt, key, ca = work / "server.crt", work / "server.key", work / "ca.crt"
    base = TLSSettings()
    assert tls_from_flags(base, None, None, None) is base
    got = tls_from_flags(base, str(crt), str(key), str(ca))
    assert (got.cert, got.key, got.client_ca) == (crt.resolve(), key.resolve(), ca.resolve())
    # --client-ca on top of a config file that has cert and key
    from_file = _settings(crt, key)
    assert tls_from_flags(from_file, None, None, str(ca)).client_ca == ca.resolve()
    for flags, message in [
        ((str(crt), None, None), "--tls-cert: give both --tls-cert and --tls-key"),
        ((None, str(key), None), "--tls-cert: give both --tls-cert and --tls-key"),
        ((None, None, str(ca)), "--client-ca: needs --tls-cert and --tls-key"),
        ((str(work / "missing.crt"), str(key), None), "--tls-cert: "),
        ((str(crt), str(work), None), "--tls-key: "),
    ]:
        with pytest.raises(ConfigError) as info:
            tls_from_flags(base, *flags)
        assert info.value.message.startswith(message)


def test_server_options_and_hsts(pki: tuple[CA, Path]) -> None:
    _, work = pki
    assert server_options(TLSSettings()) == {} and hsts_headers(TLSSettings()) == []
    plain = server_options(_settings(work / "server.crt", work / "server.key"))
    assert plain["ssl_cert"] == work / "server.crt" and plain["ssl_client_verify"] is False
    assert plain["ssl_protocol_min"] == SSLProtocols.tls12
    mutual = server_options(_settings(work / "server.crt", work / "server.key", work / "ca.crt"))
    assert mutual["ssl_ca"] == work / "ca.crt" and mutual["ssl_client_verify"] is True
    assert hsts_headers(_settings(work / "server.crt", work / "server.key", hsts_max_age=60)) == [
        ("strict-transport-security", "max-age=60; includeSubDomains")
    ]


def test_check_pair(pki: tuple[CA, Path], tmp_path: Path) -> None:
    ca, work = pki
    good = _settings(work / "server.crt", work / "server.key", work / "ca.crt")
    assert check_pair(good) is None
    other_key = tmp_path / "other.key"
    other_key.write_bytes(ca.issue("other", server=True)[1])
    assert check_pair(_settings(work / "server.crt", other_key)) == "SSLError"  # key of another cert
    assert check_pair(_settings(work / "server.crt", tmp_path / "gone.key")) is not None
    (tmp_path / "bad-ca.crt").write_text("not a certificate")
    assert (
        check_pair(_settings(work / "server.crt", work / "server.key", tmp_path / "bad-ca.crt")) is not None
    )


def test_cert_watcher_reloads_a_changed_pair_and_refuses_a_broken_one(
    pki: tuple[CA, Path], tmp_path: Path
) -> None:
    ca, _ = pki
    cert, key = ca.write(tmp_path, "srv", "gen-1", server=True)
    reloads: list[int] = []

    async def go() -> None:
        watcher = CertWatcher(_settings(cert, key, watch_interval=0.02), lambda: reloads.append(1))
        assert watcher.reload_now() is True and reloads == [1]  # SIGHUP
        watcher.start()
        new_cert, new_key = ca.issue("gen-2", server=True)
        key.write_bytes(new_key)
        cert.write_bytes(new_cert + b"\n")  # another size: a change the stamp sees
        for _ in range(200):
            if len(reloads) == 2:
                break
            await asyncio.sleep(0.01)
        assert reloads == [1, 1]
        # A broken pair is refused once, and not retried until it changes again.
        key.write_bytes(ca.issue("unrelated", server=True)[1] + b"\n\n")
        await asyncio.sleep(0.2)
        assert reloads == [1, 1]
        assert watcher.reload_now() is False
        await watcher.stop()

    asyncio.run(go())


def test_cert_watcher_without_files_and_confirm_reload() -> None:
    async def go() -> list[str]:
        idle = CertWatcher(TLSSettings(), lambda: None)
        idle.start()  # nothing to watch: no task
        await idle.stop()
        gone = CertWatcher(_settings(Path("/nonexistent/a.crt"), Path("/nonexistent/a.key")), lambda: None)
        assert gone.reload_now() is False  # files that vanished are never reloaded

        async def drain() -> None:
            await asyncio.sleep(0.05)

        old = [SimpleNamespace(_task=asyncio.ensure_future(drain()))]
        done: list[str] = []
        task = asyncio.ensure_future(confirm_reload(old))
        task.add_done_callback(lambda _: done.append("confirmed"))
        await asyncio.sleep(0)
        assert done == []
        await task
        # A worker that never drains: confirm_reload gives up rather than waiting forever.
        stuck = [SimpleNamespace(is_alive=lambda: True)]
        await asyncio.wait_for(confirm_reload(stuck, give_up_after=0.1), 2)
        return done

    assert asyncio.run(go()) == ["confirmed"]
