"""The audit hash chain: how an entry is sealed, and how a chain of entries is checked.

Each entry's ``hash`` is ``HMAC-SHA256(K, canonical(entry))`` in hex, where ``canonical`` is the
UTF-8 JSON (orjson, keys sorted, no whitespace) of the object of every field of the entry::

    {"action", "actor", "details", "origin", "prev", "seq", "target", "ts", "v"}

``seq`` is the entry's position (1, 2, 3...), ``prev`` the previous entry's hash (:data:`GENESIS`
for the first), ``details`` the JSON text exactly as stored, ``ts`` the float as stored (orjson
writes the shortest representation that reads back as the same double) and ``v`` the version of
this scheme (1). So a change to any field, to the position or to what came before changes the hash.

``K`` is derived from the pepper with HKDF-SHA256 and its own label (:func:`chain_key`): every
instance and the CLI have the pepper, and it is never in the database, so someone who can write the
database but not read the pepper cannot compute a hash for an entry they insert or change.
Someone who has the pepper can; an anchor kept elsewhere (:func:`verify`) bounds what they can
rewrite unseen.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

GENESIS: Final = "0" * 64
VERSION: Final = 1
_LABEL: Final = b"keygate audit chain v1"


def chain_key(pepper: str) -> bytes:
    """The MAC key of the chain, derived from the pepper (HKDF-SHA256, no salt, own label)."""
    if not pepper:
        raise ValueError("the audit chain key needs the pepper")
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_LABEL)
    return hkdf.derive(pepper.encode())


def canonical(
    seq: int, prev: str, ts: float, actor: str, origin: str, action: str, target: str, details: str
) -> bytes:
    """The exact bytes an entry's MAC covers (see the module docstring). Text that is not valid
    UTF-8 (a lone surrogate) raises :class:`UnicodeEncodeError`, as storing it would."""
    for text in (actor, origin, action, target, details):
        text.encode()
    doc: dict[str, Any] = {
        "action": action,
        "actor": actor,
        "details": details,
        "origin": origin,
        "prev": prev,
        "seq": seq,
        "target": target,
        "ts": ts,
        "v": VERSION,
    }
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)


def seal(
    key: bytes,
    seq: int,
    prev: str,
    ts: float,
    actor: str,
    origin: str,
    action: str,
    target: str,
    details: str,
) -> str:
    """The hash of one entry."""
    data = canonical(seq, prev, ts, actor, origin, action, target, details)
    return hmac.new(key, data, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class ChainRow:
    """An audit row as stored, chain fields included (``hash`` None: before the chain)."""

    seq: int
    ts: float
    actor: str
    origin: str
    action: str
    target: str
    details: str
    prev: str | None
    hash: str | None

    def valid(self, key: bytes) -> bool:
        if self.hash is None or self.prev is None:
            return False
        mac = seal(
            key, self.seq, self.prev, self.ts, self.actor, self.origin, self.action, self.target, self.details
        )
        return hmac.compare_digest(mac, self.hash)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What :func:`verify` found. ``ok`` False names the first bad entry (``seq``) and why."""

    ok: bool
    entries: int  # entries checked
    head_seq: int
    head_hash: str
    problem: str = ""  # altered | deleted | inserted | reordered | truncated | head_moved | anchor_mismatch
    seq: int | None = None  # the first entry at fault (or where the fault was seen)
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "head": {"seq": self.head_seq, "hash": self.head_hash},
            "problem": self.problem or None,
            "seq": self.seq,
            "message": self.message,
        }


def parse_anchor(text: str) -> tuple[int, str]:
    """``SEQ:HASH`` as printed by ``keygate audit anchor``."""
    seq, sep, digest = text.strip().partition(":")
    if not sep or not seq.isdigit() or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError("an anchor is SEQ:HASH (64 hex digits), as printed by `keygate audit anchor`")
    return int(seq), digest


def _describe(row: ChainRow) -> str:
    return f"entry {row.seq} ({row.action} {row.target})"


def verify(
    rows: Sequence[ChainRow],
    key: bytes,
    head: tuple[int, str],
    *,
    start: int = 1,
    start_prev: str = GENESIS,
    anchor: tuple[int, str] | None = None,
) -> Verdict:
    """Check ``rows`` (in stored order, from entry ``start`` on) against ``key`` and the stored
    ``head`` (seq, hash of the last entry written).

    ``start``/``start_prev`` say where the chain begins: entries before ``start`` predate it (a
    database upgraded with no pepper at hand). With ``anchor`` (seq, hash) taken earlier, the entry
    at that position must still be there with that hash: nothing up to it was rewritten, even by
    someone holding the key, and no tail including it was cut off.
    """
    hashes_at = {r.hash: i for i, r in enumerate(rows) if r.hash is not None}
    expected, prev = start, start_prev
    count = 0
    anchor_seen = anchor is None or anchor[0] < start
    for i, row in enumerate(rows):
        count += 1

        def bad(problem: str, message: str, seq: int = row.seq, n: int = count) -> Verdict:
            return Verdict(False, n, head[0], head[1], problem, seq, message)

        if row.seq > expected:
            gap = f"entry {expected}" if row.seq == expected + 1 else f"entries {expected} to {row.seq - 1}"
            return bad(
                "deleted", f"{gap} deleted (the chain jumps from {expected - 1} to {row.seq})", expected
            )
        valid = row.valid(key)
        linked = row.prev == prev
        following = rows[i + 1] if i + 1 < len(rows) else None
        if not (valid and linked):
            if row.prev is not None and hashes_at.get(row.prev, -1) > i:
                return bad(
                    "reordered", f"{_describe(row)} is out of order: it follows an entry stored after it"
                )
            if following is not None and following.prev == prev:
                return bad(
                    "inserted", f"{_describe(row)} was inserted: the next entry follows the one before it"
                )
            if not valid and row.seq > head[0]:
                return bad("inserted", f"{_describe(row)} was inserted after the head ({head[0]})")
            if linked:
                return bad("altered", f"{_describe(row)} was altered: its content does not match its hash")
            if row.prev not in hashes_at:
                return bad(
                    "deleted",
                    f"an entry before {_describe(row)} was deleted (it follows a hash no stored entry has)",
                )
            return bad("altered", f"{_describe(row)} does not fit the chain")
        if anchor is not None and row.seq == anchor[0]:
            if row.hash != anchor[1]:
                return bad(
                    "anchor_mismatch",
                    f"{_describe(row)} does not have the anchor's hash: the chain up to it was rewritten",
                )
            anchor_seen = True
        expected, prev = row.seq + 1, row.hash or GENESIS
    last_seq = expected - 1
    if anchor is not None and not anchor_seen:
        return Verdict(
            False,
            count,
            head[0],
            head[1],
            "truncated",
            anchor[0],
            f"entry {anchor[0]} (the anchor) is missing: the chain ends at {last_seq}, "
            "so entries were cut off",
        )
    if (last_seq, prev) != (head[0], head[1]) and not (last_seq < start and head[0] < start):
        return Verdict(
            False,
            count,
            head[0],
            head[1],
            "truncated" if head[0] > last_seq else "head_moved",
            last_seq + 1,
            (
                f"entries {last_seq + 1} to {head[0]} were deleted (the chain ends at {last_seq}, "
                f"the head says {head[0]})"
                if head[0] > last_seq
                else f"the head was moved (it says entry {head[0]}, the chain goes on to {last_seq})"
            ),
        )
    return Verdict(
        True, count, last_seq, prev, message=f"{count} entries, chain intact up to entry {last_seq}"
    )
