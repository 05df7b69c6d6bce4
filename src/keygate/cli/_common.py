"""Helpers shared by the CLI areas: settings, the local store, the acting operator, output."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson

from ..config import Settings, ensure_pepper, load_settings
from ..ops.audit import Actor, cli_actor
from ..store import Store, open_store


def settings_from(args: argparse.Namespace) -> Settings:
    return load_settings(args.config, args.env)


@contextmanager
def local_store(args: argparse.Namespace) -> Iterator[tuple[Settings, Store]]:
    """The settings (with a pepper, made on first use) and the store they name, closed after."""
    settings = ensure_pepper(settings_from(args))
    store = open_store(settings)
    try:
        yield settings, store
    finally:
        store.close()


def actor() -> Actor:
    return cli_actor()


def print_json(data: Any) -> None:
    print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))
    print(line.rstrip())
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
