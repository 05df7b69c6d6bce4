"""Run the gateway: build every part from settings, serve, and shut down without losing records.

``granian`` is embedded in our own event loop (uvloop), so start-up, shutdown and the final flush
of usage records are ordinary awaits here rather than hooks in another process.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass

from granian.constants import HTTPModes, Interfaces
from granian.server.embed import Server

from . import native
from .app import Gateway
from .chain import build_chain
from .config import Settings
from .errors import ConfigError
from .keycache import KeyCache
from .recorder import Recorder
from .store import SQLiteStore, Store, open_store
from .tls import CertWatcher, confirm_reload, server_options
from .upstream import UpstreamClient
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
    pool: UpstreamPool | None = None


def check_ready_to_serve(settings: Settings, pool: UpstreamPool | None = None) -> None:
    for up in settings.upstreams.values():
        if up.api_key is None and (pool is None or pool.key_count(up.name) == 0):
            raise ConfigError(
                f"upstreams.{up.name}.api_key: {up.api_key_ref} is not set in the environment "
                "(export it before starting keygate)"
            )


def build_gateway(settings: Settings) -> Parts:
    store = open_store(settings)
    recorder = Recorder(store, settings.access_log, settings.usage_flush_interval)
    keys = KeyCache(store)
    chain = build_chain(settings, keys, recorder, store)
    keyring = Keyring.from_secrets(settings.master_key, settings.previous_master_key)
    assert isinstance(store, SQLiteStore)  # the upstream-secret tables live in SQLite for now
    pool = UpstreamPool(settings, store, keyring)
    gateway = Gateway(settings, chain, UpstreamClient(settings), pool)
    return Parts(settings, store, recorder, keys, gateway, pool)


async def serve(settings: Settings, on_ready: Callable[[], None] | None = None) -> None:
    """Serve until SIGINT or SIGTERM, then drain, flush usage and close."""
    parts = build_gateway(settings)
    check_ready_to_serve(settings, parts.pool)
    from .admin.listener import admin_server, announce_first_token

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

    def stop() -> None:
        for s in (server, admin):
            s.interrupt_signal = True
            s.main_loop_interrupt.set()

    confirmations: set[asyncio.Task[None]] = set()

    def reload_tls() -> None:
        task = asyncio.ensure_future(confirm_reload(list(server.wrks)))
        confirmations.add(task)
        task.add_done_callback(confirmations.discard)
        server.reload_signal = True
        server.main_loop_interrupt.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    watcher = CertWatcher(settings.access.tls, reload_tls)

    def on_sighup() -> None:
        # SIGHUP re-reads what lives in files: upstream key references and TLS certificates.
        if parts.pool is not None:
            parts.pool.refresh_now()
        if settings.access.tls.enabled:
            watcher.reload_now()

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
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
                "upstreams": sorted(settings.upstreams),
                "hot_path": native.MODE,
            },
        )
        if on_ready is not None:
            on_ready()

    server.on_startup(started)
    await parts.recorder.start()
    await parts.gateway.chain.start()
    if parts.pool is not None:
        await parts.pool.start()
    # Everything built so far (modules, settings, caches) lives as long as the process: move it out
    # of the collector's sight, so that full collections, which would otherwise walk all of it
    # again and again under load, only look at objects made while serving.
    gc.collect()
    gc.freeze()
    try:
        # Both listeners share this loop; when either ends (or fails to bind), stop both.
        async def run(s: Server) -> None:
            try:
                await s.serve()
            finally:
                stop()

        results = await asyncio.gather(run(server), run(admin), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]
    finally:
        await watcher.stop()
        for task in confirmations:
            task.cancel()
        if parts.pool is not None:
            await parts.pool.stop()
        await parts.gateway.chain.stop()
        await parts.recorder.close()
        await parts.gateway.client.close()
        parts.store.close()
        log.info("keygate stopped")
