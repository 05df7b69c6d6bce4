"""Child processes the harness owns: start in their own session, stop the whole group on exit."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import TypeVar

T = TypeVar("T")


class HarnessError(RuntimeError):
    """A benchmark step failed; the message says which and where to look."""


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_in_temp_dir(prefix: str, work: Callable[[Path], T], keep: bool = False) -> tuple[int, T | None]:
    """Run ``work`` in a new temp dir; returns (exit code, its result, or None when it failed).

    Ctrl-C, SIGTERM and SIGHUP all unwind the stack, so every `finally` stops what it started
    (SIGINT is set explicitly because a background job inherits it ignored).
    """
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        return 0, work(tmp)
    except HarnessError as error:
        print(f"benchmark failed: {error}", file=sys.stderr)
        return 1, None
    except KeyboardInterrupt:
        print("interrupted; processes stopped", file=sys.stderr)
        return 130, None
    finally:
        if keep:
            print(f"temp dir kept (configs, logs, db): {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_accepts(port: int) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class ManagedProcess:
    """A child process in its own process group, with its output captured in a log file.

    Its own session keeps Ctrl-C in the terminal from reaching it directly, so the harness decides
    the shutdown order; `stop` then ends the group it started (the child and anything it forked).
    """

    def __init__(
        self, name: str, cmd: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.name = name
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                list(cmd),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_for_port(self, port: int, timeout: float = 10.0) -> None:
        """Block until the port accepts connections; fail early if the process dies."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise HarnessError(
                    f"{self.name} exited with code {self.popen.returncode} before listening on "
                    f"port {port}; log {self.log_path}:\n{self.log_tail()}"
                )
            if port_accepts(port):
                return
            time.sleep(0.05)
        raise HarnessError(
            f"{self.name} did not accept connections on port {port} within {timeout:.0f} s; "
            f"log {self.log_path}:\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the process group, SIGKILL whatever is left after `timeout` seconds."""
        pgid = self.popen.pid  # leader of the session created by start_new_session
        if self.popen.poll() is None:
            _signal_group(pgid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _signal_group(pgid, signal.SIGKILL)
                self.popen.wait(timeout=timeout)
        # Workers the leader forked may outlive it; they are still in our group.
        _signal_group(pgid, signal.SIGKILL)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


@contextlib.contextmanager
def private_redis(tmp: Path) -> Iterator[int]:
    """A ``redis-server`` of the run's own on a free port (keeps nothing on disk); its port."""
    server = shutil.which("redis-server")
    if server is None:
        raise HarnessError("redis-server is not installed")
    port = free_port()
    process = ManagedProcess(
        "redis",
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        tmp / f"redis-{port}.log",
    )
    try:
        process.wait_for_port(port, timeout=10.0)
        yield port
    finally:
        process.stop()
