"""Run a real keygate server in a subprocess for integration tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

UPSTREAM_SECRET = "sk-test-UPSTREAM-secret-0123456789abcdef"
SRC = str(Path(__file__).resolve().parent.parent / "src")


def free_ports(host: str = "127.0.0.1", count: int = 1) -> list[int]:
    """``count`` different ports that were free a moment ago (bound together, so the OS cannot hand
    out the same one twice, as two calls in a row sometimes do)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(family, socket.SOCK_STREAM)) for _ in range(count)]
        for s in socks:
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in socks]


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(host)[0]


def wait_port(
    host: str, port: int, timeout: float = 10.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"keygate exited early with {proc.returncode}")
        try:
            with socket.create_connection((host, port), 0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listening on {host}:{port}")


class Gateway:
    """A keygate process with its own config, database and log files under ``workdir``."""

    def __init__(
        self,
        workdir: Path,
        upstream_url: str,
        *,
        extra: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.workdir = workdir
        self.host = host
        self.port, self.admin_port = free_ports(host, 2)
        self.config_path = workdir / "keygate.yaml"
        self.access_log = workdir / "access.log"
        self.stdout_path = workdir / "stdout.log"
        self.stderr_path = workdir / "stderr.log"
        config: dict[str, Any] = {
            "listen": f"{host}:{self.port}",
            "admin_listen": f"{host}:{self.admin_port}",
            "database_url": "sqlite:///keygate.db",
            "access_log": str(self.access_log),
            "usage_flush_interval": 0.05,
            "upstreams": {"openai": {"base_url": upstream_url, "api_key": "${OPENAI_API_KEY}"}},
        }
        config.update(extra or {})
        self.config_path.write_text(yaml.safe_dump(config))
        # Subprocesses import keygate from this checkout, whatever is installed.
        self.env = {**os.environ, "PYTHONPATH": SRC, "OPENAI_API_KEY": UPSTREAM_SECRET, **(env or {})}
        self.env.pop("KEYGATE_CONFIG", None)
        self.env.pop("KEYGATE_PEPPER", None) if "KEYGATE_PEPPER" not in (env or {}) else None
        self.proc: subprocess.Popen[bytes] | None = None
        self.secrets: list[str] = [UPSTREAM_SECRET]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    @property
    def admin_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.admin_port}"

    @property
    def base(self) -> str:
        return self.url[: -len("/v1")]

    def start(self) -> Gateway:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "keygate", "--config", str(self.config_path), "serve"],
            cwd=self.workdir,
            env=self.env,
            stdout=self.stdout_path.open("ab"),
            stderr=self.stderr_path.open("ab"),
        )
        wait_port(self.host, self.port, proc=self.proc)
        return self

    def stop(self) -> int:
        if self.proc is None:
            return 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc = None
        return code

    def cli(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "keygate", "--config", str(self.config_path), *args],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            input=input,
            timeout=30,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"keygate {' '.join(args)} failed: {result.stderr}")
        # Kept for the secret search; these are the outputs meant to show a secret (once).
        shown_once = args[:2] in (
            ("keys", "create"),
            ("keys", "rotate"),
            ("admin-tokens", "create"),
        ) or args[:1] == ("init",)
        with (self.workdir / "cli-output.log").open("a") as fh:
            fh.write(result.stderr if shown_once else result.stdout + result.stderr)
        return result

    def create_key(self, name: str = "test", *extra: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.cli("keys", "create", "--name", name, "--json", *extra).stdout)
        self.secrets.append(data["key"])
        return data

    def access_entries(self, timeout: float = 3.0, at_least: int = 1) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            lines = self.access_log.read_text().splitlines() if self.access_log.exists() else []
            if len(lines) >= at_least or time.monotonic() > deadline:
                return [json.loads(line) for line in lines]
            time.sleep(0.02)

    def wait_entry(self, predicate: Any, timeout: float = 5.0) -> dict[str, Any]:
        """The newest access-log entry matching ``predicate``, waiting for the batch flush."""
        deadline = time.monotonic() + timeout
        while True:
            for entry in reversed(self.access_entries(timeout=0)):
                if predicate(entry):
                    return entry
            if time.monotonic() > deadline:
                raise AssertionError("no matching access-log entry")
            time.sleep(0.02)

    def written_files(self) -> Iterable[Path]:
        return [p for p in self.workdir.rglob("*") if p.is_file()]

    def __enter__(self) -> Gateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def assert_no_secret_written(files: Iterable[Path], secrets: Iterable[str]) -> None:
    """Search every file byte for byte for each secret (and its bare form without prefix)."""
    secrets = [s for s in secrets if s]
    for path in files:
        data = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in data, f"a secret leaked into {path.name}"
