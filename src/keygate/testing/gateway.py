"""A real keygate in this process: the server on loopback ports, and the CLI called in process.

In an async test, :func:`serving` runs the gateway in the test's own event loop::

    async with serving(load_settings("keygate.yaml")) as gw:
        client = AsyncOpenAI(base_url=gw.url, api_key=key)

In a plain test, :class:`LocalGateway` runs the same server in a background thread with its own
loop, keeps its config, database and logs in one folder, and runs CLI commands in process::

    with LocalGateway(tmp_path, upstream.url) as gw:
        key = gw.create_key("app")["key"]
        OpenAI(base_url=gw.url, api_key=key).models.list()
        gw.cli("keys", "revoke", key_id)

Both are the server ``keygate serve`` runs (``server.serve``), without its process-wide steps
(signal handlers, ``gc.freeze``). What needs a process of its own (signals, a crash, TLS reload by
SIGHUP, secrets in argv) is better tested with ``python -m keygate serve`` as a subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import socket
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..cli import main as cli_main
from ..config import Settings, ensure_pepper, load_settings, process_env
from ..logs import JSONFormatter
from ..server import serve

__all__ = ["CliResult", "LocalGateway", "Running", "free_ports", "serving"]


@dataclass(frozen=True)
class Running:
    """Where a running gateway listens."""

    settings: Settings

    @property
    def url(self) -> str:
        """The base URL for an OpenAI client, e.g. ``http://127.0.0.1:PORT/v1``."""
        return _url(self.settings.listen.host, self.settings.listen.port) + "/v1"

    @property
    def admin_url(self) -> str:
        return _url(self.settings.admin_listen.host, self.settings.admin_listen.port)


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[Running]:
    """Serve ``settings`` in the running event loop until the block ends (then drain and flush)."""
    settings = ensure_pepper(settings)
    ready = asyncio.Event()
    stop = asyncio.Event()
    task = asyncio.ensure_future(serve(settings, ready.set, stop=stop, own_process=False))
    waiter = asyncio.ensure_future(ready.wait())
    try:
        await asyncio.wait((task, waiter), return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # start-up failed: raise why
            raise RuntimeError("keygate stopped before it was ready")
        yield Running(settings)
    finally:
        waiter.cancel()
        stop.set()
        await task


def free_ports(host: str = "127.0.0.1", count: int = 1) -> list[int]:
    """``count`` different ports that were free a moment ago (bound together, so the OS cannot hand
    out the same one twice)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(family, socket.SOCK_STREAM)) for _ in range(count)]
        for s in socks:
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in socks]


@dataclass(frozen=True)
class CliResult:
    """What a CLI command run in process did, shaped like ``subprocess.CompletedProcess``."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


class _TextStdin(io.StringIO):
    def isatty(self) -> bool:
        return False


class LocalGateway:
    """A keygate with its own config file, database and logs under ``workdir``, served in process.

    ``extra`` is merged into the generated config (top-level keys replace); ``env`` is the
    environment the server and the CLI see, on top of this process's. The operator log goes to
    ``stderr.log`` in ``workdir`` as JSON lines (as ``keygate serve`` writes it to stderr).
    """

    def __init__(
        self,
        workdir: Path,
        upstream_url: str,
        *,
        extra: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
        upstream_key: str = "sk-mock-upstream-key",
    ) -> None:
        self.workdir = workdir
        self.host = host
        self.port, self.admin_port = free_ports(host, 2)
        self.config_path = workdir / "keygate.yaml"
        self.access_log = workdir / "access.log"
        self.stderr_path = workdir / "stderr.log"
        config: dict[str, Any] = {
            "listen": f"{'[' + host + ']' if ':' in host else host}:{self.port}",
            "admin_listen": f"{'[' + host + ']' if ':' in host else host}:{self.admin_port}",
            "database_url": "sqlite:///keygate.db",
            "access_log": str(self.access_log),
            "usage_flush_interval": 0.05,
            "upstreams": {"openai": {"base_url": upstream_url, "api_key": "${OPENAI_API_KEY}"}},
        }
        config.update(extra or {})
        self.write_config(config)
        base = {k: v for k, v in process_env().items() if k not in ("KEYGATE_CONFIG", "KEYGATE_PEPPER")}
        self.env: dict[str, str] = {**base, "OPENAI_API_KEY": upstream_key, **(env or {})}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._failure: BaseException | None = None
        self._log_handler: logging.Handler | None = None

    def write_config(self, config: Mapping[str, Any]) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(dict(config)))

    @property
    def config(self) -> dict[str, Any]:
        loaded: dict[str, Any] = yaml.safe_load(self.config_path.read_text())
        return loaded

    @property
    def url(self) -> str:
        return _url(self.host, self.port) + "/v1"

    @property
    def admin_url(self) -> str:
        return _url(self.host, self.admin_port)

    @property
    def base(self) -> str:
        return _url(self.host, self.port)

    @property
    def running(self) -> bool:
        return self._thread is not None

    def settings(self) -> Settings:
        return load_settings(self.config_path, self.env)

    # -- the server ------------------------------------------------------------------------------

    def start(self) -> LocalGateway:
        """Serve in a background thread; returns once both listeners are up (or raises why not)."""
        if self._thread is not None:
            raise RuntimeError("the gateway is running already")
        settings = self.settings()  # a config error is raised here, in the caller's thread
        handler = logging.FileHandler(self.stderr_path)
        handler.setFormatter(JSONFormatter())
        logger = logging.getLogger("keygate")
        logger.addHandler(handler)
        if logger.level == logging.NOTSET or logger.level > logging.INFO:
            logger.setLevel(logging.INFO)
        self._log_handler = handler
        ready = threading.Event()
        self._failure = None
        self._thread = threading.Thread(
            target=self._run, args=(settings, ready), name=f"keygate-{self.port}", daemon=True
        )
        self._thread.start()
        ready.wait(30)
        if self._failure is not None or not ready.is_set():
            self._join()
            failure, self._failure = self._failure, None
            raise failure or RuntimeError("keygate did not start within 30 s")
        return self

    def _run(self, settings: Settings, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        self._stop = asyncio.Event()

        async def main() -> None:
            assert self._stop is not None
            await serve(ensure_pepper(settings), ready.set, stop=self._stop, own_process=False)

        try:
            loop.run_until_complete(main())
        except BaseException as exc:
            self._failure = exc
        finally:
            ready.set()
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def stop(self) -> int:
        """Stop serving (in-flight requests finish, records are flushed); 0 as a clean exit."""
        if self._thread is None:
            return 0
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        self._join()
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure
        return 0

    def _join(self) -> None:
        if self._thread is not None:
            self._thread.join(30)
        self._thread = self._loop = self._stop = None
        if self._log_handler is not None:
            logging.getLogger("keygate").removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None

    def __enter__(self) -> LocalGateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the CLI ---------------------------------------------------------------------------------

    def cli(self, *args: str, input: str | None = None, check: bool = True) -> CliResult:
        """Run ``keygate --config <this config> ARGS`` in process, with ``input`` on stdin."""
        argv = ("--config", str(self.config_path), *args)
        out, err = io.StringIO(), io.StringIO()
        stdin = sys.stdin
        sys.stdin = _TextStdin(input or "")
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    code = cli_main(list(argv), self.env)
                except SystemExit as exc:  # argparse: usage errors, --help
                    code = exc.code if isinstance(exc.code, int) else 1
                except Exception:
                    traceback.print_exc()
                    code = 1
        finally:
            sys.stdin = stdin
        result = CliResult(tuple(args), code, out.getvalue(), err.getvalue())
        if check and code != 0:
            raise AssertionError(f"keygate {' '.join(args)} failed ({code}): {result.stderr}")
        return result

    def create_key(self, name: str = "test", *extra: str) -> dict[str, Any]:
        """``keys create --name NAME --json EXTRA...``; the key's view, with its secret in ``key``."""
        created: dict[str, Any] = json.loads(
            self.cli("keys", "create", "--name", name, "--json", *extra).stdout
        )
        return created

    # -- what it wrote ---------------------------------------------------------------------------

    def access_entries(self, timeout: float = 3.0, at_least: int = 1) -> list[dict[str, Any]]:
        """The access log's entries, waiting up to ``timeout`` for at least ``at_least``."""
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
                    return dict(entry)
            if time.monotonic() > deadline:
                raise AssertionError("no matching access-log entry")
            time.sleep(0.02)

    def log_entries(self) -> list[dict[str, Any]]:
        """The operator log's entries (JSON lines), so far."""
        if not self.stderr_path.exists():
            return []
        lines = self.stderr_path.read_text().splitlines()
        return [dict(json.loads(line)) for line in lines if line.startswith("{")]

    def written_files(self) -> Iterable[Path]:
        return [p for p in self.workdir.rglob("*") if p.is_file()]
