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
    p.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this certificate chain (PEM)")
    p.add_argument("--tls-key", metavar="FILE", help="private key of --tls-cert (PEM)")
    p.add_argument("--client-ca", metavar="FILE", help="require client certificates signed by this CA (mTLS)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from .. import logs
    from ..server import serve

    logs.configure(args.log_level)
    settings = settings_from(args)
    if args.listen:
        host, port = parse_listen(args.listen, "--listen")
        settings = replace(settings, listen_host=host, listen_port=port)
    from ..tls import tls_from_flags

    tls = tls_from_flags(settings.access.tls, args.tls_cert, args.tls_key, args.client_ca)
    settings = replace(settings, access=replace(settings.access, tls=tls))
    import uvloop

    uvloop.run(serve(settings))
    return 0
