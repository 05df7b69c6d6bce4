"""Real keygate servers for the tests: in process (:class:`Gateway`, the default), or as a
subprocess (:class:`ProcessGateway`) for what needs a process of its own: signals, a crash, TLS
reload by SIGHUP, what reaches argv."""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from keygate.testing import CliResult, LocalGateway, free_ports

UPSTREAM_SECRET = "sk-test-UPSTREAM-secret-0123456789abcdef"
SRC = str(Path(__file__).resolve().parent.parent / "src")


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


# The commands whose output is meant to show a secret (once): their stdout is not kept for the
# secret search, everything else they and every other command print is.
_SHOWS_A_SECRET = {("keys", "create"), ("keys", "rotate"), ("admin-tokens", "create")}


def _keep_output(workdir: Path, args: tuple[str, ...], stdout: str, stderr: str) -> None:
    shown_once = args[:2] in _SHOWS_A_SECRET or args[:1] == ("init",)
    with (workdir / "cli-output.log").open("a") as fh:
        fh.write(stderr if shown_once else stdout + stderr)


class Gateway(LocalGateway):
    """keygate in this process, in front of ``upstream_url`` with :data:`UPSTREAM_SECRET` as its
    upstream key; every secret a test hands out is collected in ``secrets`` for the leak search."""

    def __init__(
        self,
        workdir: Path,
        upstream_url: str,
        *,
        extra: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        super().__init__(workdir, upstream_url, extra=extra, env=env, host=host, upstream_key=UPSTREAM_SECRET)
        self.secrets: list[str] = [UPSTREAM_SECRET]

    def cli(self, *args: str, input: str | None = None, check: bool = True) -> CliResult:
        result = super().cli(*args, input=input, check=False)
        _keep_output(self.workdir, args, result.stdout, result.stderr)
        if check and result.returncode != 0:
            raise AssertionError(f"keygate {' '.join(args)} failed: {result.stderr}")
        return result

    def create_key(self, name: str = "test", *extra: str) -> dict[str, Any]:
        data = super().create_key(name, *extra)
        self.secrets.append(data["key"])
        return data


def process_cli(gw: LocalGateway, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """``keygate ARGS`` for ``gw``'s config as a process of its own (for a command that must be a
    process: one that crashes on purpose, or whose argv is the point)."""
    result = subprocess.run(
        [sys.executable, "-m", "keygate", "--config", str(gw.config_path), *args],
        cwd=gw.workdir,
        env={**gw.env, "PYTHONPATH": SRC},
        capture_output=True,
        text=True,
        input=input,
        timeout=60,
    )
    _keep_output(gw.workdir, args, result.stdout, result.stderr)
    return result


class ProcessGateway(Gateway):
    """The same gateway as :class:`Gateway` (config, database and logs under ``workdir``), served
    and commanded by ``python -m keygate`` processes: for what needs a process of its own."""

    def __init__(
        self,
        workdir: Path,
        upstream_url: str,
        *,
        extra: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        super().__init__(workdir, upstream_url, extra=extra, env=env, host=host)
        self.env["PYTHONPATH"] = SRC  # the processes import keygate from this checkout
        self.stdout_path = workdir / "stdout.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.serve_args: list[str] = []  # more `keygate serve` arguments (TLS flags, say)

    @property
    def running(self) -> bool:
        return self.proc is not None

    def start(self) -> ProcessGateway:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "keygate", "--config", str(self.config_path), "serve", *self.serve_args],
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

    def cli(self, *args: str, input: str | None = None, check: bool = True) -> CliResult:
        result = process_cli(self, *args, input=input)
        if check and result.returncode != 0:
            raise AssertionError(f"keygate {' '.join(args)} failed: {result.stderr}")
        return CliResult(tuple(args), result.returncode, result.stdout, result.stderr)

    def __enter__(self) -> ProcessGateway:
        return self.start()


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def logged(name: str = "keygate") -> Iterator[list[logging.LogRecord]]:
    """The records logged to ``name`` (a keygate logger) inside the block. A handler of its own:
    keygate's CLI turns off propagation to the root logger, so pytest's caplog may see nothing."""
    logger = logging.getLogger(name)
    keep, level = _Keep(), logger.level
    logger.addHandler(keep)
    logger.setLevel(logging.DEBUG)
    try:
        yield keep.records
    finally:
        logger.removeHandler(keep)
        logger.setLevel(level)


def assert_no_secret_written(files: Iterable[Path], secrets: Iterable[str]) -> None:
    """Search every file byte for byte for each secret (and its bare form without prefix)."""
    secrets = [s for s in secrets if s]
    for path in files:
        data = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in data, f"a secret leaked into {path.name}"
