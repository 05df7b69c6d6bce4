"""TLS termination settings for the embedded granian server, and certificate reloading.

granian terminates TLS with rustls, which offers only AEAD cipher suites with forward secrecy
(TLS 1.3: AES-GCM and ChaCha20-Poly1305; TLS 1.2: ECDHE with AES-GCM or ChaCha20-Poly1305), so
there are no weak ciphers to switch off. keygate sets the minimum protocol to TLS 1.2; rustls
negotiates TLS 1.3 whenever the client offers it. With a client CA, every client must present a
certificate signed by it, or the handshake fails.

Reloading: the certificate files are read when granian spawns its worker. On SIGHUP, or when
:class:`CertWatcher` sees a file change, granian's own graceful respawn starts a new worker on the
same listening socket (reading the files again), then asks the old one to stop: it stops accepting
and finishes the requests it has in flight. Both share the socket in between, so no connection is
refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from .access_config import TLSSettings
from .errors import ConfigError

log = logging.getLogger("keygate")


def tls_from_flags(
    base: TLSSettings, cert: str | None, key: str | None, client_ca: str | None
) -> TLSSettings:
    """``serve --tls-cert/--tls-key/--client-ca`` on top of the config file's ``tls`` section."""
    if not (cert or key or client_ca):
        return base
    if bool(cert) != bool(key):
        raise ConfigError("--tls-cert: give both --tls-cert and --tls-key")
    if client_ca and not cert and base.cert is None:
        raise ConfigError("--client-ca: needs --tls-cert and --tls-key")
    return replace(
        base,
        cert=_file("--tls-cert", cert) or base.cert,
        key=_file("--tls-key", key) or base.key,
        client_ca=_file("--client-ca", client_ca) or base.client_ca,
    )


def _file(flag: str, value: str | None) -> Path | None:
    if not value:
        return None
    path = Path(value).resolve()
    if not path.is_file():
        raise ConfigError(f"{flag}: {value} is not a readable file")
    return path


def server_options(tls: TLSSettings) -> dict[str, Any]:
    """Keyword arguments for granian's embedded ``Server``."""
    if not tls.enabled:
        return {}
    from granian.constants import SSLProtocols

    return {
        "ssl_cert": tls.cert,
        "ssl_key": tls.key,
        "ssl_ca": tls.client_ca,
        "ssl_client_verify": tls.client_ca is not None,
        "ssl_protocol_min": SSLProtocols.tls12,
    }


def hsts_headers(tls: TLSSettings) -> list[tuple[str, str]]:
    if not tls.enabled:
        return []
    return [("strict-transport-security", f"max-age={tls.hsts_max_age}; includeSubDomains")]


async def confirm_reload(old_workers: list[Any], give_up_after: float = 600.0) -> None:
    """Log once the workers serving the old certificates have finished (drained and stopped)."""

    def running(w: Any) -> bool:
        # granian's embedded worker keeps its asyncio task in ``_task``; it is done once drained.
        task = getattr(w, "_task", None)
        return not task.done() if task is not None else bool(w.is_alive())

    deadline = asyncio.get_running_loop().time() + give_up_after
    while any(running(w) for w in old_workers):
        if asyncio.get_running_loop().time() > deadline:
            return
        await asyncio.sleep(0.05)
    log.info("TLS certificates reloaded; old workers drained")


def check_pair(tls: TLSSettings) -> str | None:
    """Why the certificate files cannot be served (None when they can): never reload a broken pair."""
    assert tls.cert is not None and tls.key is not None
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(tls.cert, tls.key)
        if tls.client_ca is not None:
            ssl.create_default_context(cafile=str(tls.client_ca))
    except (OSError, ssl.SSLError) as exc:
        return type(exc).__name__
    return None


class CertWatcher:
    """Reloads TLS on SIGHUP (:meth:`reload_now`) or when the files change and stay unchanged for a poll.

    A pair that does not load (half-written, or a key that does not match the certificate) is
    refused with an error log and the server keeps the certificates it has.
    """

    def __init__(self, tls: TLSSettings, reload: Callable[[], None]) -> None:
        self._tls = tls
        self._paths = [p for p in (tls.cert, tls.key, tls.client_ca) if p is not None]
        self._interval = tls.watch_interval
        self._reload = reload
        self._task: asyncio.Task[None] | None = None
        self._loaded = self._stamp()

    def _stamp(self) -> tuple[tuple[float, int], ...]:
        out = []
        for p in self._paths:
            try:
                st = p.stat()
                out.append((st.st_mtime, st.st_size))
            except OSError:
                out.append((0.0, -1))
        return tuple(out)

    def reload_now(self) -> bool:
        stamp = self._stamp()
        problem = check_pair(self._tls)
        if problem is not None:
            log.error("certificate files do not load; keeping the current ones", extra={"error": problem})
            return False
        self._loaded = stamp
        log.info("reloading TLS certificates")
        self._reload()
        return True

    async def _run(self) -> None:
        previous = self._loaded
        while True:
            await asyncio.sleep(self._interval)
            now = self._stamp()
            # Act only on a change that has stayed put for one whole interval (writes finished).
            if now == previous and now != self._loaded and not self.reload_now():
                self._loaded = now  # do not retry a broken pair until it changes again
            previous = now

    def start(self) -> None:
        if self._paths:
            self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
