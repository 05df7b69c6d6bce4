"""Egress TLS: the upstream certificate is verified; a per-upstream CA bundle can be trusted."""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ..helpers import UPSTREAM_SECRET, Gateway, assert_no_secret_written


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
