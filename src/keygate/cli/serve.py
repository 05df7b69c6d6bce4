"""``keygate serve``: run the gateway."""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from ..config import parse_listen
from ._common import settings_from


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("serve", parents=[common], help="run the gateway")
    p.add_argument("--listen", metavar="HOST:PORT", help="address to listen on (default 127.0.0.1:8080)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from .. import logs
    from ..server import serve

    logs.configure(args.log_level)
    settings = settings_from(args)
    if args.listen:
        host, port = parse_listen(args.listen, "--listen")
        settings = replace(settings, listen_host=host, listen_port=port)
    import uvloop

    uvloop.run(serve(settings))
    return 0
