"""Alerts: security and budget events sent to webhooks, in the background, signed.

API (for every part that has something to tell an operator, analytics included; an event that
must also be in the audit trail goes through ``events.SecurityEvents.event(kind, target, ...)``,
which writes ``security.<kind>`` and calls this)::

    alerter.emit("honeytoken_used", key_id="key_...", key_name="canary", client_ip="203.0.113.9")

:meth:`Alerter.emit` never blocks and never raises: it puts the alert on each matching sink's
bounded queue and returns (a full queue drops the alert, counted in :attr:`Alerter.dropped` and
logged). ``kind`` is a short snake_case name (:data:`keygate.audit_config.ALERT_EVENTS` lists
keygate's own); fields are JSON values naming things by id and name. A field must never hold a
secret: string values are passed through :func:`keygate.logs.redact` anyway, and a
:class:`~keygate.types.Secret` is replaced by ``"***"``.

Each sink (``alerts:`` in the config file) has a thread of its own that POSTs its queue in order:

- ``format: webhook``: the JSON body ``{"event", "alert_id", "sent_at", "instance", ...fields}`` with
  ``X-Keygate-Signature: sha256=<hex HMAC-SHA256(secret, body)>``, ``X-Keygate-Timestamp`` (the
  body's ``sent_at``, whole seconds) and ``X-Keygate-Event``. The timestamp is inside the signed
  body, so a receiver that checks the signature, that the header equals ``sent_at``, and that it
  is recent (say 5 minutes) refuses a replayed alert; ``alert_id`` (unique per alert, the same on
  every retry) lets it drop a duplicate delivery. A field named like one of these four is left
  out (the alert's own value wins).
- ``format: slack``: ``{"text": "..."}`` for a Slack-compatible incoming webhook (signed the same
  way when the sink has a secret).

A delivery that fails (connection error, timeout, 429 or 5xx) is retried ``retries`` times with
exponential backoff (``backoff``, doubled each time, at most 60 s); other answers are not retried.
The client is ``outbound.sync_client``: no redirects, no proxy from the environment, TLS
verified; ``http`` only to a loopback host (``schema.url``).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import queue
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import httpx
import orjson

from . import outbound
from .audit_config import AlertSink
from .logs import redact
from .types import Secret

log = logging.getLogger("keygate.alerts")

_STOP = object()


def clean(value: Any) -> Any:
    """A field value fit for an alert: secrets masked, key-shaped text redacted."""
    if isinstance(value, Secret):
        return "***"
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [clean(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return redact(str(value))


def signature(secret: str, body: bytes) -> str:
    """The ``X-Keygate-Signature`` value of a body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def slack_text(alert: dict[str, Any]) -> str:
    fields = ", ".join(
        f"{k}={v}" for k, v in alert.items() if k not in ("event", "alert_id", "sent_at", "instance")
    )
    return f"[keygate {alert.get('instance', '')}] {alert['event']}: {fields}"


class _Sink:
    def __init__(self, spec: AlertSink) -> None:
        self.spec = spec
        self.queue: queue.Queue[Any] = queue.Queue(spec.queue_size)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="keygate-alerts", daemon=True)
        self._thread.start()
        self.delivered = 0
        self.failed = 0

    def wants(self, kind: str) -> bool:
        return not self.spec.events or kind in self.spec.events

    def _run(self) -> None:
        client = outbound.sync_client("", {}, timeout=self.spec.timeout)
        try:
            while True:
                alert = self.queue.get()
                try:
                    if alert is _STOP:
                        return
                    self._deliver(client, alert)
                finally:
                    self.queue.task_done()
        finally:
            client.close()

    def _deliver(self, client: httpx.Client, alert: dict[str, Any]) -> None:
        delay = self.spec.backoff
        for attempt in range(self.spec.retries + 1):
            now = int(time.time())
            alert["sent_at"] = now
            doc: dict[str, Any] = alert if self.spec.format == "webhook" else {"text": slack_text(alert)}
            body = orjson.dumps(doc)
            headers = {
                "content-type": "application/json",
                "x-keygate-event": str(alert["event"]),
                "x-keygate-timestamp": str(now),
            }
            if self.spec.secret is not None:
                headers["x-keygate-signature"] = signature(self.spec.secret.reveal(), body)
            retry = False
            try:
                response = client.post(self.spec.url, content=body, headers=headers)
                if response.status_code < 300:
                    self.delivered += 1
                    return
                retry = response.status_code == 429 or response.status_code >= 500
                reason = f"status {response.status_code}"
            except httpx.HTTPError as exc:
                retry, reason = True, type(exc).__name__
            if not retry or attempt == self.spec.retries or self._stopping.wait(min(delay, 60.0)):
                self.failed += 1
                log.warning(
                    "alert delivery failed",
                    extra={
                        "alert": alert["event"],
                        "alert_id": alert["alert_id"],
                        "reason": reason,
                        "attempts": attempt + 1,
                        "sink": self.spec.url,
                    },
                )
                return
            delay *= 2

    def stop(self, timeout: float) -> None:
        """Deliver what is queued for up to ``timeout`` seconds, then give up on the rest."""
        deadline = time.monotonic() + timeout
        with self.queue.all_tasks_done:
            self.queue.all_tasks_done.wait_for(lambda: self.queue.unfinished_tasks == 0, timeout)
        self._stopping.set()  # ends a backoff wait at once
        with contextlib.suppress(queue.Full):
            self.queue.put(_STOP, timeout=max(0.0, deadline - time.monotonic()) or 0.01)
        self._thread.join(max(0.0, deadline - time.monotonic()) + 0.5)


class Alerter:
    """The alert sinks of ``alerts:``; one per process (the gateway's, or the CLI's)."""

    def __init__(self, sinks: Sequence[AlertSink] = ()) -> None:
        self._instance = socket.gethostname()
        self._sinks = [_Sink(spec) for spec in sinks]
        self.dropped = 0
        self.emitted = 0

    @property
    def enabled(self) -> bool:
        return bool(self._sinks)

    def emit(self, kind: str, /, **fields: Any) -> None:
        """Queue an alert for every sink that wants ``kind``; never blocks, never raises."""
        if not self._sinks:
            return
        try:
            alert: dict[str, Any] = {"event": kind, "alert_id": uuid.uuid4().hex, "instance": self._instance}
            for k, v in fields.items():
                if k not in alert:
                    alert[k] = clean(v)
            self.emitted += 1
            for sink in self._sinks:
                if sink.wants(kind):
                    try:
                        sink.queue.put_nowait(dict(alert))
                    except queue.Full:
                        self.dropped += 1
                        if self.dropped == 1 or self.dropped % 100 == 0:
                            log.warning(
                                "alert queue full: alert dropped",
                                extra={"alert": kind, "dropped": self.dropped, "sink": sink.spec.url},
                            )
        except Exception:  # an alert must never break what emitted it
            log.exception("alert could not be queued", extra={"alert": kind})

    def close(self, timeout: float = 2.0) -> None:
        """Deliver what is queued (for at most ``timeout`` seconds in all), then stop the threads."""
        deadline = time.monotonic() + timeout
        for sink in self._sinks:
            sink.stop(max(0.0, deadline - time.monotonic()))
