"""The audit stream out of the database: a JSON-lines file and syslog, as entries are written.

Whichever process writes an entry (a gateway, the CLI, the admin API) exports it, right after its
transaction commits, in the thread that wrote it: the data plane's entries are written by a
write-behind thread, so a slow syslog or disk never holds up a request. Each line is the entry as
listed by ``keygate audit --json`` (its chain ``hash`` and ``prev`` included), so a copy kept
elsewhere can be checked against the database later. An export that fails is logged and skipped:
the database, not the copy, is the record of truth.

The file is opened for each entry with ``O_APPEND`` (one ``write`` per line), so the gateway and
the CLI can append to the same file and logrotate may move it at any time.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import socket
from typing import Any

import orjson

from .audit_config import AuditSettings

log = logging.getLogger("keygate.audit")


class _Syslog(logging.handlers.SysLogHandler):
    def handleError(self, record: logging.LogRecord) -> None:
        log.warning("audit export to syslog failed", extra={"syslog": str(self.address)})


class AuditExporter:
    def __init__(self, settings: AuditSettings) -> None:
        self._file = settings.export_file
        self._syslog_address = settings.syslog
        self._syslog: _Syslog | None = None  # connected on first use, again after a failure

    @property
    def enabled(self) -> bool:
        return self._file is not None or self._syslog_address is not None

    def write(self, entry: dict[str, Any]) -> None:
        line = orjson.dumps(entry, option=orjson.OPT_SORT_KEYS)
        if self._file is not None:
            try:
                fd = os.open(self._file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, line + b"\n")
                finally:
                    os.close(fd)
            except OSError as exc:
                log.warning("audit export to file failed", extra={"file": self._file, "error": exc.strerror})
        if self._syslog_address is not None:
            try:
                if self._syslog is None:
                    self._syslog = _syslog_handler(self._syslog_address)
            except OSError as exc:
                log.warning(
                    "audit export to syslog failed",
                    extra={"syslog": self._syslog_address, "error": exc.strerror},
                )
                return
            record = logging.makeLogRecord(
                {"msg": "keygate-audit: %s", "args": (line.decode(),), "levelname": "INFO", "levelno": 20}
            )
            self._syslog.emit(record)

    def close(self) -> None:
        if self._syslog is not None:
            self._syslog.close()


def _syslog_handler(address: str) -> _Syslog:
    if address.startswith("unix:"):
        return _Syslog(address=address[5:], facility=logging.handlers.SysLogHandler.LOG_AUTH)
    host, _, port = address[4:].rpartition(":")
    return _Syslog(
        address=(host.strip("[]"), int(port)),
        facility=logging.handlers.SysLogHandler.LOG_AUTH,
        socktype=socket.SOCK_DGRAM,
    )
