"""Helpers shared by the CLI areas: settings, store, audit trail, output."""

from __future__ import annotations

import argparse
import getpass
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import orjson

from ..config import Settings, load_settings
from ..store import Store, open_store


def settings_from(args: argparse.Namespace) -> Settings:
    return load_settings(args.config)


@contextmanager
def local_store(args: argparse.Namespace) -> Iterator[tuple[Settings, Store]]:
    settings = settings_from(args)
    store = open_store(settings)
    try:
        yield settings, store
    finally:
        store.close()


def audit(store: Store, action: str, target: str, **details: Any) -> None:
    """Record an operator action with who, from where and when."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    store.write_audit(
        time.time(),
        f"cli:{user}",
        action,
        target,
        f"cli@{socket.gethostname()}",
        orjson.dumps(details).decode(),
    )


def fmt_time(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def print_json(data: Any) -> None:
    print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))
    print(line.rstrip())
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
