"""The admin listener: a second embedded granian server (ASGI) in the gateway's event loop.

It also announces the first admin token: when no admin-role token exists yet and the operator
is watching a terminal, ``keygate serve`` issues one and prints it there once. Without a terminal
(a service manager, a test harness) nothing secret is printed anywhere: the log says to run
``keygate init`` or ``keygate admin-tokens create --role admin`` instead.
"""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import Sequence
from typing import TextIO

from granian.constants import HTTPModes, Interfaces

from ..alerts import Alerter
from ..config import Settings
from ..headers import without_server_banner
from ..metrics import Metrics
from ..ops import tokens
from ..ops.audit import SERVE
from ..sockets import OwnSocketServer
from ..store import Store
from .api import build_admin_app
from .readiness import Check

log = logging.getLogger("keygate")

ADMIN_BACKLOG = 128


def admin_server(
    settings: Settings,
    store: Store,
    sock: socket.socket,
    *,
    alerter: Alerter | None = None,
    checks: Sequence[Check] = (),
    metrics: Metrics | None = None,
) -> OwnSocketServer:
    """The granian server for the admin API on ``sock``, the listener that ``server.py`` bound on
    ``settings.admin_listen`` (without ``SO_REUSEPORT``: see ``keygate.sockets``); ``checks`` are
    the dependencies ``/readyz`` asks about besides the store."""
    return OwnSocketServer(
        without_server_banner(
            build_admin_app(settings, store, alerter=alerter, checks=checks, metrics=metrics)
        ),
        sock,
        interface=Interfaces.ASGINL,
        http=HTTPModes.http1,
        websockets=False,
        backlog=ADMIN_BACKLOG,
        log_enabled=False,
    )


def announce_first_token(settings: Settings, store: Store, terminal: TextIO | None = None) -> None:
    """Issue and show the first admin token on the operator's terminal, if there is none yet."""
    if tokens.has_admin(store):
        return
    out = terminal if terminal is not None else sys.stderr
    if not out.isatty():
        log.warning(
            "no admin token exists yet; run `keygate init` or `keygate admin-tokens create --role admin`",
        )
        return
    token, secret = tokens.issue(store, settings.pepper, SERVE, "admin", "first admin")
    print_first_token(out, token.id, secret)


def print_first_token(out: TextIO, token_id: str, secret: str) -> None:
    out.write(
        f"\nFirst admin token ({token_id}, role admin). Store it now; keygate cannot show it again:\n"
        f"\n    {secret}\n\n"
    )
    out.flush()
