"""Who did it, from where: the actor of an operation, and the one writer of audit records.

Details are built from the change itself (never from an issued secret), serialised with the
standard library (a policy may hold integers beyond 64 bits before validation refuses it) and
passed through :func:`keygate.logs.redact`, so nothing key-shaped is ever stored in them.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

from ..logs import redact
from ..types import AuditRecord


@dataclass(frozen=True, slots=True)
class Actor:
    """An admin token id (``adm_...``) or a local operator (``cli:USER``), and where it acted from."""

    id: str
    origin: str

    def record(self, action: str, target: str, **details: Any) -> AuditRecord:
        """The audit record of one action by this actor, now."""
        raw = json.dumps(details, default=str, ensure_ascii=False, separators=(",", ":"))
        return AuditRecord(time.time(), self.id, self.origin, action, target, redact(raw))


def cli_actor() -> Actor:
    """The operator running the CLI on this machine: ``cli:USER`` from ``cli@HOST``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return Actor(f"cli:{user}", f"cli@{socket.gethostname()}")


SERVE = Actor("serve", "local")
"""``keygate serve`` itself (issuing the first admin token on an operator's terminal)."""
