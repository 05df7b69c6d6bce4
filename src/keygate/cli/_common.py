"""Helpers shared by the CLI areas: settings, the local store, the acting operator, output."""

from __future__ import annotations

import argparse
import re
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


# What a terminal would act on rather than show: C0 and C1 controls (newline, ESC starting an ANSI
# sequence, NUL...), DEL, line and paragraph separators, and the bidirectional-text controls that
# reorder what is displayed. Input checks refuse them in names (ops.validate), but a row stored by
# an older version may still hold one.
_UNSHOWABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def _escape(m: re.Match[str]) -> str:
    code = ord(m.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def shown(text: str) -> str:
    """``text`` safe to print on a terminal: each character of :data:`_UNSHOWABLE` as an escape."""
    return _UNSHOWABLE.sub(_escape, text)


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    """One line per row, whatever the cells hold (see :func:`shown`)."""
    rows = [[shown(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))
    print(line.rstrip())
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
