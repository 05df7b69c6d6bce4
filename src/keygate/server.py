"""Run the gateway: build every part from settings, serve, and shut down without losing records.

``granian`` is embedded in our own event loop (uvloop), so start-up, shutdown and the final flush
of usage records are ordinary awaits here rather than hooks in another process.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass

from granian.constants import HTTPModes, Interfaces
from granian.server.embed import Server

from .app import Gateway
from .chain import build_chain
from .config import Settings
from .errors import ConfigError
from .keycache import KeyCache
from .recorder import Recorder
from .store import SQLiteStore, Store, open_store
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
    server = Server(
        parts.gateway,
        address=settings.listen_host,
        port=settings.listen_port,
        interface=Interfaces.RSGI,
        http=HTTPModes.http1,
        backlog=2048,
        log_enabled=False,
    )

    def stop() -> None:
        server.interrupt_signal = True
        server.main_loop_interrupt.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    if parts.pool is not None:
        loop.add_signal_handler(signal.SIGHUP, parts.pool.refresh_now)

    def started() -> None:
        log.info(
            "keygate listening",
            extra={
                "url": f"http://{settings.listen_host}:{settings.listen_port}/v1",
                "database": str(settings.database_path),
                "keys": len(parts.keys),
                "upstreams": sorted(settings.upstreams),
            },
        )
        if on_ready is not None:
            on_ready()

    server.on_startup(started)
    await parts.recorder.start()
    await parts.gateway.chain.start()
    if parts.pool is not None:
        await parts.pool.start()
    try:
        await server.serve()
    finally:
        if parts.pool is not None:
            await parts.pool.stop()
        await parts.gateway.chain.stop()
        await parts.recorder.close()
        await parts.gateway.client.close()
        parts.store.close()
        log.info("keygate stopped")
