"""Run the gateway: build every part from settings, serve, and shut down without losing records.

``granian`` is embedded in our own event loop (uvloop), so start-up, shutdown and the final flush
of usage records are ordinary awaits here rather than hooks in another process. Both listening
sockets are bound here, before anything is served or issued, and without ``SO_REUSEPORT``
(``keygate.sockets``): a second gateway on an address that one already serves is refused.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import platform
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from granian.constants import HTTPModes, Interfaces
from granian.server.embed import Server

from . import __version__
from .admin.listener import ADMIN_BACKLOG, admin_server, announce_first_token
from .admin.readiness import Check
from .alerts import Alerter
from .app import Gateway
from .chain import Chain
from .config import Address, Settings, ensure_pepper
from .counters import Counters, MemoryCounters
from .counters.redis import RedisCounters
from .errors import ConfigError
from .events import SecurityEvents
from .forward import Forwarder
from .guards import Parts as GuardParts
from .guards import default_guards
from .guards.objects import Visibility
from .guards.per_instance import check_config as check_shared_limits
from .keycache import KeyCache
from .metrics import Metrics, Sources
from .object_lists import Lister
from .ownership import Ownership
from .recorder import Recorder
from .sockets import OwnSocketServer, listening_socket
from .spend import SpendBook
from .store import Store, open_store
from .tls import CertWatcher, confirm_reload, server_options
from .upstream_pool import UpstreamPool
from .vault import Keyring

if TYPE_CHECKING:
    from .tracing import Tracing

log = logging.getLogger("keygate")

BACKLOG = 2048  # the data plane's listen backlog


@dataclass
class Parts:
    """Everything a running gateway is made of; tests and embedders may build it themselves."""

    settings: Settings
    store: Store
    recorder: Recorder
    keys: KeyCache
    gateway: Gateway
    pool: UpstreamPool
    events: SecurityEvents | None = None
    counters: Counters | None = None
    metrics: Metrics | None = None
    tracing: Tracing | None = None


def build(settings: Settings) -> Parts:
    """Open the store and make every part of a gateway, each given the parts it needs (and, on a
    first run, the pepper file)."""
    settings = ensure_pepper(settings)
    store = open_store(settings)
    try:
        recorder = Recorder(
            store, settings.access_log, settings.usage_flush_interval, settings.write_buffer_rows
        )
        keys = KeyCache(store)
        counters = make_counters(settings, store)
        spend = SpendBook(counters, store, settings.usage_flush_interval)
        events = SecurityEvents(
            store, Alerter(settings.alerts), settings.audit, settings.usage_flush_interval
        )
        metrics = Metrics(settings)
        objects = Ownership(store, settings.usage_flush_interval)
        guard_parts = GuardParts(
            settings, keys, recorder, counters, spend, store, events, metrics.observe, objects=objects
        )
        chain = Chain(default_guards(guard_parts))
        keyring = Keyring.from_secrets(settings.master_key, settings.previous_master_key)
        pool = UpstreamPool(settings, store, keyring, events)
        check_ready_to_serve(settings, pool)
        tracing = None
        if settings.tracing.enabled:  # the OpenTelemetry SDK is imported only then
            from .tracing import Tracing

            tracing = Tracing(settings)
    except BaseException:
        store.close()
        raise
    forwarder = Forwarder(settings, pool)
    lister = Lister(Visibility(objects, keys), forwarder)
    gateway = Gateway(settings, chain, forwarder, tracing, lister)
    metrics.sources = Sources(pool, keys, recorder, counters, lambda: gateway.arrivals)
    return Parts(settings, store, recorder, keys, gateway, pool, events, counters, metrics, tracing)


def make_counters(settings: Settings, store: Store) -> Counters:
    """Redis counters shared by every instance when ``redis_url`` is set, else in process (refused
    with a networked database when limits, budgets or lockouts are configured)."""
    if settings.redis_url is None:
        network = settings.network
        check_shared_limits(settings.database_url, settings.limits, network.lockout.enabled)
        return MemoryCounters()

    def load_spend() -> dict[str, float]:
        return {name: spent + held for name, (spent, held) in store.load_spend().items()}

    return RedisCounters(
        settings.redis_url,
        password=settings.redis_password,
        ca_file=settings.redis_ca_file,
        lease=settings.counter_lease,
        load_spend=load_spend,
    )


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


async def _when_serving(servers: tuple[OwnSocketServer, ...], started: Callable[[], None]) -> None:
    """Call ``started`` once every server's workers run.

    The listening sockets are keygate's own and listen before granian starts (connections wait in
    the backlog until a worker accepts them), so what is left to prove is that granian's workers
    came up: each is a task of this loop that, once started, waits until it is told to stop. If
    one ends at once (granian could not serve), this never calls ``started``.
    """
    for s in servers:
        await s.spawned.wait()
    await asyncio.sleep(0)  # the workers' first steps (scheduled before this): they serve, or fail
    workers: list[Any] = [w for s in servers for w in s.wrks]
    if all(w.is_alive() for w in workers):
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
    sockets: list[socket.socket] = []
    try:
        # Bound before anything is served or issued: a second keygate on an address is refused.
        for field, address, backlog in (
            ("listen", settings.listen, BACKLOG),
            ("admin_listen", settings.admin_listen, ADMIN_BACKLOG),
        ):
            sockets.append(listening_socket(field, address.host, address.port, backlog))
    except BaseException:
        for sock in sockets:
            sock.close()
        parts.store.close()
        raise
    listener, admin_listener = sockets
    announce_first_token(settings, parts.store)
    # /readyz asks the store, and the shared counters when there are any.
    readiness: list[Check] = []
    if isinstance(parts.counters, RedisCounters):
        shared = parts.counters

        async def counters_ready() -> None:
            if not await shared.ready():
                raise ConnectionError("Redis does not answer")

        readiness.append(("counters", counters_ready))
    admin = admin_server(
        settings,
        parts.store,
        admin_listener,
        alerter=parts.events.alerter if parts.events is not None else None,
        checks=readiness,
        metrics=parts.metrics,
    )
    server = OwnSocketServer(
        parts.gateway,
        listener,
        interface=Interfaces.RSGI,
        http=HTTPModes.http1,
        backlog=BACKLOG,
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
        # SIGHUP re-reads what lives in files: upstream key references and TLS certificates, and
        # reopens the access log (logrotate).
        parts.recorder.reopen()
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
                "database": settings.database_label,
                "keys": len(parts.keys),
                "upstreams": parts.pool.names(),
                # What runs: this package's Python, interpreted (no compiled build; docs/HOTPATH.md).
                "runs": f"keygate {__version__} (pure Python) on {platform.python_implementation()} "
                f"{platform.python_version()}",
            },
        )
        if on_ready is not None:
            on_ready()

    announcer = asyncio.ensure_future(_when_serving((server, admin), started))
    await parts.recorder.start()
    if parts.events is not None:
        await parts.events.start()
    if isinstance(parts.counters, RedisCounters):
        await parts.counters.start()
    if parts.metrics is not None:
        await parts.metrics.start()
    await parts.gateway.chain.start()
    await parts.pool.start()
    if own_process:
        # Everything built so far (modules, settings, caches) lives as long as the process: move it
        # out of the collector's sight, so that full collections, which would otherwise walk all of
        # it again and again under load, only look at objects made while serving.
        gc.collect()
        gc.freeze()
    try:
        # Both servers share this loop; when either ends (or fails to start), stop both.
        async def run(s: Server, field: str, address: Address) -> None:
            try:
                await s.serve()
            except (OSError, RuntimeError) as exc:  # granian's start-up failures
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise ConfigError(
                    f"{field}: could not serve on {address.host}:{address.port}: {reason}"
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
            # The servers ended before both served (granian logs a worker's failure and returns):
            # say so, instead of exiting as if asked to.
            raise ConfigError(
                f"listen: could not serve on {settings.listen.host}:{settings.listen.port} and "
                f"{settings.admin_listen.host}:{settings.admin_listen.port} (granian's workers did "
                "not start)"
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
        if isinstance(parts.counters, RedisCounters):
            await parts.counters.close()  # after the chain: the spend book's last flush reads it
        await parts.recorder.close()
        if parts.events is not None:
            await parts.events.close()  # the last security entries, and queued alerts (2 s at most)
        if parts.metrics is not None:
            await parts.metrics.close()
        if parts.tracing is not None:
            await asyncio.to_thread(parts.tracing.shutdown)  # the spans still queued, exported
        parts.gateway.forwarder.close()
        for sock in sockets:
            sock.close()
        parts.store.close()
        log.info("keygate stopped")
