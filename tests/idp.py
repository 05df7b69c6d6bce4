"""A tiny real identity provider on loopback for tests: a JWKS endpoint and RFC 7662 introspection."""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

ISSUER = "https://idp.test"
AUDIENCE = "keygate"


class SigningKey:
    def __init__(self, kid: str) -> None:
        self.kid = kid
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public = self.private.public_key()

    def jwk(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(self.public))
        return {**data, "kid": self.kid, "use": "sig", "alg": "RS256"}

    def sign(self, claims: dict[str, Any] | None = None, *, kid: str | None = None, **overrides: Any) -> str:
        now = int(time.time())
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 300}
        body.update(claims or {})
        body.update(overrides)
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(body, self.private, algorithm="RS256", headers={"kid": kid or self.kid})


class IdP:
    """Serves ``/jwks.json`` and ``/introspect``; counts calls; can be switched off."""

    def __init__(self, client_id: str = "keygate", client_secret: str = "s3cret-introspection") -> None:  # noqa: S107
        self.keys: list[SigningKey] = []
        self.down = False
        self.jwks_fetches = 0
        self.introspections = 0
        self.tokens: dict[str, dict[str, Any]] = {}
        self.expected_auth = "Basic " + base64.b64encode(f"{client_id}:{client_secret}".encode()).decode()
        self.bad_auth = 0
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def _reply(self, status: int, data: Any) -> None:
                body = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path != "/jwks.json":
                    return self._reply(404, {})
                idp.jwks_fetches += 1
                if idp.down:
                    return self._reply(503, {"error": "down"})
                self._reply(200, {"keys": [k.jwk() for k in idp.keys]})

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                form = parse_qs(self.rfile.read(length).decode())
                if self.path != "/introspect":
                    return self._reply(404, {})
                idp.introspections += 1
                if idp.down:
                    return self._reply(503, {"error": "down"})
                if self.headers.get("authorization") != idp.expected_auth:
                    idp.bad_auth += 1
                    return self._reply(401, {"error": "invalid_client"})
                token = form.get("token", [""])[0]
                self._reply(200, idp.tokens.get(token, {"active": False}))

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> IdP:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
