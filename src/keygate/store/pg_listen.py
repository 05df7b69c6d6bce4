"""The PostgreSQL store's change listener: LISTEN for changes, poll the revisions as a safety net.

One daemon thread per store holds its own connection (not the pool's) and:

- waits on that connection's socket (``select``) for ``NOTIFY keygate_changes``, which every
  change to keys, teams, upstreams and upstream keys sends in its own transaction; a ``keys``
  notification sets :attr:`Listener.keys_flag` at once, so a revoke reaches a gateway's key cache
  within milliseconds of its commit;
- reads ``meta.keys_rev`` and ``meta.upstreams_rev`` every ``poll_interval`` seconds (and right
  after each reconnection), so a notification lost with a connection delays a change by at most
  that long;
- reconnects by itself (backoff 0.1 s doubling to 1 s) and tells the store whether the database
  is reachable (:attr:`Listener.down`), so callers fail fast while it is not.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import psycopg

from ..errors import StoreUnavailable

log = logging.getLogger("keygate.store")

CHANNEL = "keygate_changes"
_STOP, _POLL = b"s", b"p"


def _newer(a: str | None, b: str) -> str:
    """The later of two revisions (they only grow; compared as numbers)."""
    if a is None:
        return b
    try:
        return b if int(b) > int(a) else a
    except ValueError:
        return b


class Listener:
    def __init__(
        self,
        url: str,
        kwargs: Mapping[str, Any],
        poll_interval: float,
        on_recovered: Callable[[], None],
    ) -> None:
        self._url = url
        self._kwargs = dict(kwargs)
        self.poll_interval = poll_interval
        self._on_recovered = on_recovered
        # Read on every request (keys_changed): plain attributes, set from the listener thread.
        self.keys_flag = True  # the first look reports a change, as the SQLite store's does
        self.objects_flag = True  # the same for the owners of stored objects (objects_rev)
        self._objects_rev: str | None = None
        self.down = False
        self.running = False
        self._keys_rev: str | None = None
        self._upstreams: str | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._first = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._thread: threading.Thread | None = None
        self._poll_now = False
        self._outage = False  # the listener lost the database and said so
        self.connected = 0  # how many times it connected (tests, /readyz)

    # -- what the store asks ----------------------------------------------------------------

    def start(self) -> None:
        self.running = True
        self._thread = threading.Thread(target=self._run, name="keygate-pg-listen", daemon=True)
        self._thread.start()
        # Wait for the first connection attempt, so the revisions are known (or the failure is).
        self._first.wait(float(self._kwargs.get("connect_timeout", 3)) + 2.0)

    def stop(self) -> None:
        self._stopping.set()
        self._wake(_STOP)
        if self._thread is not None:
            self._thread.join(10)
        self.running = False
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def upstreams_rev(self) -> str:
        with self._lock:
            rev = self._upstreams
        if rev is None:
            raise StoreUnavailable("The database is unreachable; try again when it is back.")
        return rev

    def committed(self, bumped: Mapping[str, str]) -> None:
        """This store committed a change: tell its own caches now, not at the notification."""
        for what, rev in bumped.items():
            self._saw(what, rev)

    def _saw(self, what: str, rev: str) -> None:
        """Revision ``rev`` of ``keys`` or ``upstreams`` exists: a change if it is newer."""
        with self._lock:
            if what == "keys":
                newest = _newer(self._keys_rev, rev)
                if newest != self._keys_rev:
                    self._keys_rev = newest
                    self.keys_flag = True
            elif what == "upstreams":
                self._upstreams = _newer(self._upstreams, rev)
            elif what == "objects":
                newest = _newer(self._objects_rev, rev)
                if newest != self._objects_rev:
                    self._objects_rev = newest
                    self.objects_flag = True

    def suspect(self) -> None:
        """A call just failed to reach the database: fail fast until the listener proves it back."""
        if self.running:
            self.down = True
            self._wake(_POLL)

    def _wake(self, what: bytes) -> None:
        # OSError: full (a wake-up is pending anyway) or closed (stopping)
        with contextlib.suppress(OSError):
            os.write(self._wake_w, what)

    # -- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self._url, autocommit=True, **self._kwargs) as conn:
                    conn.execute(f"LISTEN {CHANNEL}".encode())
                    self._poll(conn)
                    self.connected += 1
                    backoff = 0.1
                    self._first.set()
                    self._serve(conn)
            except (psycopg.Error, OSError) as exc:
                if not self._outage:
                    self._outage = True
                    log.warning(
                        "database unreachable: serving from the key cache, buffering writes",
                        extra={"error": type(exc).__name__},
                    )
                self.down = True
            self._first.set()
            if self._stopping.wait(backoff):
                break
            backoff = min(backoff * 2, 1.0)

    def _serve(self, conn: psycopg.Connection[Any]) -> None:
        fd = conn.fileno()
        deadline = time.monotonic() + self.poll_interval
        while not self._stopping.is_set():
            left = 0.0 if self._poll_now else deadline - time.monotonic()
            if left <= 0:
                self._poll(conn)
                # What arrived during the poll's query waits in psycopg's backlog, not the socket.
                for n in conn.notifies(timeout=0):
                    self._notified(n.payload)
                deadline = time.monotonic() + self.poll_interval
                continue
            ready, _, _ = select.select([fd, self._wake_r], [], [], left)
            if self._wake_r in ready:
                signal = os.read(self._wake_r, 64)
                if _STOP in signal:
                    return
                self._poll_now = True  # someone suspects the database: check now
            if fd in ready:
                for n in conn.notifies(timeout=0):
                    self._notified(n.payload)

    def _notified(self, payload: str) -> None:
        what, _, rev = payload.partition(":")  # "keys:42": the revision the change committed
        if rev:
            self._saw(what, rev)
        else:
            self._poll_now = True

    def _poll(self, conn: psycopg.Connection[Any]) -> None:
        self._poll_now = False
        rows = conn.execute(
            b"SELECT k, v FROM meta WHERE k IN ('keys_rev', 'upstreams_rev', 'objects_rev')"
        ).fetchall()
        revs = {str(k): str(v) for k, v in rows}
        self._saw("keys", revs.get("keys_rev", "0"))
        self._saw("upstreams", revs.get("upstreams_rev", "0"))
        self._saw("objects", revs.get("objects_rev", "0"))
        if self.down or self._outage:
            self.down = self._outage = False
            log.warning("database reachable again: writing what was buffered")
            try:
                self._on_recovered()
            except Exception:
                log.exception("connection pool check failed")
