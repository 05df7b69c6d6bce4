"""``keygate master-key``: generate a master key, re-wrap every stored data key under a new one.

Rotation (``ops.master_key``) re-wraps row by row and resumes where it stopped when run again.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Any

from ..config import read_master_key_file
from ..errors import InvalidRequest
from ..ops import master_key as ops
from ..types import Secret
from ..vault import generate_master_key, kek_id, parse_master_key
from ._common import actor, local_store, print_json


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("master-key", parents=[common], help="manage the master key of stored secrets")
    ms = p.add_subparsers(dest="master_key_command", required=True, metavar="ACTION")

    g = ms.add_parser("generate", parents=[common], help="write a new random master key to a file (0600)")
    g.add_argument("--out", required=True, metavar="FILE", help="where to write it (must not exist)")
    g.set_defaults(handler=generate)

    r = ms.add_parser("rotate", parents=[common], help="re-wrap every data key under a new master key")
    r.add_argument("--new-key-file", required=True, metavar="FILE", help="the new master key (chmod 600)")
    # Test hook: kill this process (SIGKILL, like a crash) after re-wrapping N keys.
    r.add_argument("--crash-after", type=int, default=None, help=argparse.SUPPRESS)
    r.set_defaults(handler=rotate)

    s = ms.add_parser("status", parents=[common], help="how many stored keys each master key wraps")
    s.add_argument("--json", action="store_true")
    s.set_defaults(handler=status)


def generate(args: argparse.Namespace) -> int:
    path = Path(args.out)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise InvalidRequest(f"{path} exists already; keygate never overwrites a key file") from None
    value = generate_master_key()
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    print(f"Wrote a new master key ({kek_id(parse_master_key(Secret(value)))}) to {path}.")
    return 0


def rotate(args: argparse.Namespace) -> int:
    new = read_master_key_file(Path(args.new_key_file), "--new-key-file")

    def progress(key_id: str, done: int, todo: int) -> None:
        print(f"re-wrapped {key_id} ({done}/{todo})", flush=True)
        if args.crash_after is not None and done >= args.crash_after:
            os.kill(os.getpid(), signal.SIGKILL)

    with local_store(args) as (settings, store):
        result = ops.rotate(settings, store, actor(), new, progress)
    print(
        f"All {result['total']} stored key(s) are now wrapped by {result['current']} "
        f"({result['rewrapped']} re-wrapped now).\n"
        "Next: point master_key_file (or KEYGATE_MASTER_KEY) at the new key; keep the old one as "
        "previous_master_key_file until every gateway has restarted."
    )
    sys.stdout.flush()
    return 0


def status(args: argparse.Namespace) -> int:
    with local_store(args) as (settings, store):
        view = ops.status(settings, store)
    if args.json:
        print_json(view)
    else:
        current = view["current"]
        print(f"current master key: {current or '(none configured)'}")
        for kid, n in sorted(view["wrapped_by"].items()):
            print(f"  {kid}: {n} key(s){'  (current)' if kid == current else ''}")
    return 0
