"""``keygate serve``: run the gateway."""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

import uvloop

from .. import logs
from ..config import ensure_pepper, parse_listen
from ..server import serve
from ..tls import tls_from_flags
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
    logs.configure(args.log_level)
    settings = settings_from(args)
    if args.listen:
        settings = replace(settings, listen=parse_listen(args.listen, "--listen"))
    tls = tls_from_flags(settings.tls, args.tls_cert, args.tls_key, args.client_ca)
    uvloop.run(serve(ensure_pepper(replace(settings, tls=tls))))
    return 0
