"""Run the gateway: build every part from settings, serve, and shut down without losing records.

``granian`` is embedded in our own event loop (uvloop), so start-up, shutdown and the final flush
of usage records are ordinary awaits here rather than hooks in another process.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import platform
import signal
from collections.abc import Callable
from dataclasses import dataclass

from granian.constants import HTTPModes, Interfaces
from granian.server.embed import Server

from . import __version__
from .admin.listener import admin_server, announce_first_token
from .app import Gateway
from .chain import Chain
from .config import Address, Settings, ensure_pepper
from .counters import MemoryCounters
from .errors import ConfigError
from .forward import Forwarder
from .guards import Parts as GuardParts
from .guards import default_guards
from .keycache import KeyCache
from .recorder import Recorder
from .spend import SpendBook
from .store import Store, open_store
from .tls import CertWatcher, confirm_reload, server_options
from .upstream_pool import UpstreamPool
from .vault import Keyring

log = logging.getLogger("keygate")


@dataclass
class Parts:
    """Everything a running gateway is made of; tests and embedders may build it themselves."""

    settings: Settings
    store: Store
    recorder: Recorder
    keys: KeyCache
    gateway: Gateway
    pool: UpstreamPool


def build(settings: Settings) -> Parts:
    """Open the store and make every part of a gateway, each given the parts it needs (and, on a
    first run, the pepper file)."""
    settings = ensure_pepper(settings)
    store = open_store(settings)
    try:
        recorder = Recorder(store, settings.access_log, settings.usage_flush_interval)
        keys = KeyCache(store)
        counters = MemoryCounters()  # in process; a networked implementation plugs in here
        spend = SpendBook(counters, store, settings.usage_flush_interval)
        chain = Chain(default_guards(GuardParts(settings, keys, recorder, counters, spend)))
        keyring = Keyring.from_secrets(settings.master_key, settings.previous_master_key)
        pool = UpstreamPool(settings, store, keyring)
        check_ready_to_serve(settings, pool)
    except BaseException:
        store.close()
        raise
    gateway = Gateway(settings, chain, Forwarder(settings, pool))
    return Parts(settings, store, recorder, keys, gateway, pool)


def check_ready_to_serve(settings: Settings, pool: UpstreamPool) -> None:
    """Refuse to start when no upstream could be reached with a key, or the default is unknown."""
    if pool.upstream_for(None) is None:
        raise ConfigError(
            f"default_upstream: {settings.default_upstream!r} is neither in the config file nor stored "
            f"(known: {', '.join(pool.names()) or 'none'})"
        )
    for name in pool.names():
        up = pool.upstream_for(name)
        if up is not None and up.fallback is not None and up.fallback not in pool.names():
            raise ConfigError(f"upstreams.{name}.fallback: {up.fallback!r} is not another upstream")
    if not any(pool.key_count(name) for name in pool.names()):
        refs = sorted({up.api_key_ref for up in settings.upstreams.values() if up.api_key_ref})
        hint = f"set {', '.join(refs)} in the environment, or " if refs else ""
        raise ConfigError(
            f"upstreams: no upstream has a key ({hint}store one with "
            "`keygate upstreams add NAME --key-stdin`)"
        )
    for name in pool.names():
        if not pool.key_count(name):
            log.warning(
                "upstream has no key yet: requests routed to it get 503 until one is added",
                extra={"upstream": name},
            )


def _socket_inodes() -> set[str]:
    """The inodes of this process's open sockets (Linux; empty where /proc is not there)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/self/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    return inodes


def _our_listening_ports(before: set[str]) -> set[int] | None:
    """The TCP ports this process listens on with sockets opened since ``before`` was taken
    (Linux: its socket inodes in LISTEN state), or None where that cannot be read."""
    try:
        inodes = _socket_inodes() - before
        ports = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(FileNotFoundError), open(table) as fh:
                next(fh)
                for line in fh:
                    fields = line.split()
                    if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                        ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        return ports
    except OSError:
        return None


async def _when_listening(settings: Settings, started: Callable[[], None], before: set[str]) -> None:
    """Call ``started`` once both listeners are up.

    granian's start-up hook runs before its workers bind, so it cannot say "ready". A socket of
    this process listening on each port, opened since ``before``, is the proof (a connection alone
    is not: another process, or another socket of this one, may hold the port). Where the socket
    table cannot be read, a connection that succeeds is taken instead. If a listener cannot bind,
    this never calls ``started``.
    """
    wanted = {a.port for a in (settings.listen, settings.admin_listen) if a.port}
    while True:
        ours = _our_listening_ports(before)
        if ours is None:
            break
        if wanted <= ours:
            started()
            return
        await asyncio.sleep(0.005)
    for address in (settings.listen, settings.admin_listen):
        if address.port == 0:
            continue  # a port picked by the system: nothing to probe
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(address.host, address.host)  # noqa: S104
        while True:
            try:
                _, writer = await asyncio.open_connection(host, address.port)
            except OSError:
                await asyncio.sleep(0.005)
                continue
            writer.close()
            break
    started()


async def serve(
    settings: Settings,
    on_ready: Callable[[], None] | None = None,
    *,
    stop: asyncio.Event | None = None,
    own_process: bool = True,
) -> None:
    """Serve until SIGINT or SIGTERM (or ``stop`` is set), then drain, flush usage and close.

    ``own_process`` (the ``keygate serve`` command) also installs the signal handlers and moves
    what was built out of the garbage collector's sight; an embedder (``keygate.testing``) runs
    the same server without either.
    """
    parts = build(settings)
    settings = parts.settings
    announce_first_token(settings, parts.store)
    admin = admin_server(settings, parts.store)
    server = Server(
        parts.gateway,
        address=settings.listen_host,
        port=settings.listen_port,
        interface=Interfaces.RSGI,
        http=HTTPModes.http1,
        backlog=2048,
        log_enabled=False,
        **server_options(settings.access.tls),
    )
    # Old workers get this long to finish in-flight requests after a TLS reload's new worker is up.
    server.respawn_interval = 1.0

    asked_to_stop: list[bool] = []  # by a signal or the stop event, not by a server that ended

    def stop_serving() -> None:
        for s in (server, admin):
            s.interrupt_signal = True
            s.main_loop_interrupt.set()

    def request_stop() -> None:
        asked_to_stop.append(True)
        stop_serving()

    confirmations: set[asyncio.Task[None]] = set()

    def reload_tls() -> None:
        task = asyncio.ensure_future(confirm_reload(list(server.wrks)))
        confirmations.add(task)
        task.add_done_callback(confirmations.discard)
        server.reload_signal = True
        server.main_loop_interrupt.set()

    loop = asyncio.get_running_loop()
    watcher = CertWatcher(settings.access.tls, reload_tls)

    def on_sighup() -> None:
        # SIGHUP re-reads what lives in files: upstream key references and TLS certificates.
        parts.pool.refresh_now()
        if settings.access.tls.enabled:
            watcher.reload_now()

    if own_process:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, request_stop)
        loop.add_signal_handler(signal.SIGHUP, on_sighup)
    if stop is not None:
        stopper = asyncio.ensure_future(stop.wait())
        stopper.add_done_callback(lambda _: request_stop())
    if settings.access.tls.enabled:
        watcher.start()

    def started() -> None:
        log.info(
            "keygate listening",
            extra={
                "url": f"{'https' if settings.access.tls.enabled else 'http'}://{settings.listen_host}:{settings.listen_port}/v1",
                "admin_url": f"http://{settings.admin_host}:{settings.admin_port}/",
                "database": str(settings.database_path),
                "keys": len(parts.keys),
                "upstreams": parts.pool.names(),
                # What runs: this package's Python, interpreted (no compiled build; docs/HOTPATH.md).
                "runs": f"keygate {__version__} (pure Python) on {platform.python_implementation()} "
                f"{platform.python_version()}",
            },
        )
        if on_ready is not None:
            on_ready()

    # The sockets open before the servers bind: what they open next is what counts as listening.
    announcer = asyncio.ensure_future(_when_listening(settings, started, _socket_inodes()))
    await parts.recorder.start()
    await parts.gateway.chain.start()
    await parts.pool.start()
    if own_process:
        # Everything built so far (modules, settings, caches) lives as long as the process: move it
        # out of the collector's sight, so that full collections, which would otherwise walk all of
        # it again and again under load, only look at objects made while serving.
        gc.collect()
        gc.freeze()
    try:
        # Both listeners share this loop; when either ends (or fails to bind), stop both.
        async def run(s: Server, field: str, address: Address) -> None:
            try:
                await s.serve()
            except (OSError, RuntimeError) as exc:  # granian's bind failure is a RuntimeError
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise ConfigError(
                    f"{field}: could not listen on {address.host}:{address.port}: {reason}"
                ) from None
            finally:
                stop_serving()

        results = await asyncio.gather(
            run(server, "listen", settings.listen),
            run(admin, "admin_listen", settings.admin_listen),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]
        if not announcer.done() and not asked_to_stop:
            # The servers ended before both listened (granian logs a worker's bind failure and
            # returns): say so, instead of exiting as if asked to.
            raise ConfigError(
                f"listen: could not listen on {settings.listen.host}:{settings.listen.port} and "
                f"{settings.admin_listen.host}:{settings.admin_listen.port} (is an address in use?)"
            )
    finally:
        announcer.cancel()
        await watcher.stop()
        for task in confirmations:
            task.cancel()
        if stop is not None:
            stopper.cancel()
        await parts.pool.stop()
        await parts.gateway.chain.stop()
        await parts.recorder.close()
        parts.gateway.forwarder.close()
        parts.store.close()
        log.info("keygate stopped")
