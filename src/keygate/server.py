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
from .store import Store, open_store
from .upstream import UpstreamClient

log = logging.getLogger("keygate")


@dataclass
class Parts:
    """Everything a running gateway is made of; tests and embedders may build it themselves."""

    settings: Settings
    store: Store
    recorder: Recorder
    keys: KeyCache
    gateway: Gateway


def check_ready_to_serve(settings: Settings) -> None:
    for up in settings.upstreams.values():
        if up.api_key is None:
            raise ConfigError(
                f"upstreams.{up.name}.api_key: {up.api_key_ref} is not set in the environment "
                "(export it before starting keygate)"
            )


def build_gateway(settings: Settings) -> Parts:
    store = open_store(settings)
    recorder = Recorder(store, settings.access_log, settings.usage_flush_interval)
    keys = KeyCache(store)
    chain = build_chain(settings, keys, recorder)
    gateway = Gateway(settings, chain, UpstreamClient(settings))
    return Parts(settings, store, recorder, keys, gateway)


async def serve(settings: Settings, on_ready: Callable[[], None] | None = None) -> None:
    """Serve until SIGINT or SIGTERM, then drain, flush usage and close."""
    check_ready_to_serve(settings)
    parts = build_gateway(settings)
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
    )

    def stop() -> None:
        for s in (server, admin):
            s.interrupt_signal = True
            s.main_loop_interrupt.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)

    def started() -> None:
        log.info(
            "keygate listening",
            extra={
                "url": f"http://{settings.listen_host}:{settings.listen_port}/v1",
                "admin_url": f"http://{settings.admin_host}:{settings.admin_port}/",
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
        await parts.gateway.chain.stop()
        await parts.recorder.close()
        await parts.gateway.client.close()
        parts.store.close()
        log.info("keygate stopped")
