"""Redis for tests: a key prefix of its own on the shared server, or a private server to stop."""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

SHARED_URL = "redis://127.0.0.1:6379/0"


def fresh_prefix() -> str:
    return f"kgtest:{secrets.token_hex(4)}:"


def drop_prefix(prefix: str, url: str = SHARED_URL) -> None:
    """Delete every key under ``prefix`` (what a test wrote)."""
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """``redis-server --port N --save '' --appendonly no`` of this test: nothing on disk, so a
    restart comes back empty."""

    def __init__(
        self,
        workdir: Path,
        password: str | None = None,
        tls: tuple[Path, Path, Path] | None = None,
        users: tuple[str, ...] = (),
    ) -> None:
        self.port = _free_port()
        self.workdir = workdir
        self.password = password
        self.tls = tls  # (certificate, key, CA file): TLS only (rediss://), on the same port
        self.users = users  # ACL users besides the default one ("NAME on >PASSWORD ~keys ...")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def _listen(self) -> list[str]:
        if self.tls is None:
            return ["--port", str(self.port)]
        cert, key, _ = self.tls
        return [
            *("--port", "0", "--tls-port", str(self.port)),
            *("--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-auth-clients", "no"),
        ]

    def start(self) -> None:
        server = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                server,
                *self._listen(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                *(["--requirepass", self.password] if self.password else []),
                *[part for user in self.users for part in ("--user", *user.split())],
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                client = self.client(socket_connect_timeout=0.2)
                if client.ping():
                    client.close()
                    return
            except redis.RedisError:
                time.sleep(0.02)
        raise RuntimeError("private redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def client(self, **options: Any) -> redis.Redis:
        if self.tls is not None:
            options.update(ssl=True, ssl_ca_certs=str(self.tls[2]))
        return redis.Redis(port=self.port, password=self.password, **options)


@contextmanager
def private_redis(
    workdir: Path,
    password: str | None = None,
    tls: tuple[Path, Path, Path] | None = None,
    users: tuple[str, ...] = (),
) -> Iterator[PrivateRedis]:
    server = PrivateRedis(workdir, password, tls, users)
    server.start()
    try:
        yield server
    finally:
        server.stop()
