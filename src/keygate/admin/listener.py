"""The admin listener: a second embedded granian server (ASGI) in the gateway's event loop.

It also announces the first admin token: when no admin-role token exists yet and the operator
is watching a terminal, ``keygate serve`` issues one and prints it there once. Without a terminal
(a service manager, a test harness) nothing secret is printed anywhere: the log says to run
``keygate init`` or ``keygate admin-tokens create --role admin`` instead.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from granian.constants import HTTPModes, Interfaces
from granian.server.embed import Server

from ..config import Settings
from ..ops import tokens
from ..ops.audit import SERVE
from ..store import Store
from .api import build_admin_app

log = logging.getLogger("keygate")


def admin_server(settings: Settings, store: Store) -> Server:
    """The granian server for the admin API on ``settings.admin_host:admin_port``."""
    return Server(
        build_admin_app(settings, store),
        address=settings.admin_host,
        port=settings.admin_port,
        interface=Interfaces.ASGINL,
        http=HTTPModes.http1,
        websockets=False,
        backlog=128,
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
