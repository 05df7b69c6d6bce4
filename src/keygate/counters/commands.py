"""The Redis counters' script calls, packed for the wire with as little work per request as can be.

A request's admit and release scripts name the same counters, with the same limits, on every
request of a key (until its limits change): only the lease, the costs and the budget amounts
differ. So each call is packed in two parts. Its *shape* (the script, its keys and the constant
arguments: every limit, period and cap) is packed into RESP bytes once and kept in a bounded
cache; per request only the few changing arguments are written after it. The scripts take their
arguments in that order, constants first (``scripts.py``).

Scripts are called by their SHA-1, computed here (Redis names a script by the SHA-1 of its body),
so no SCRIPT LOAD answer is awaited before the first call; a Redis that answers NOSCRIPT (it
restarted) is sent the scripts (:data:`LOAD`) and the call once more.

Changing arguments are ASCII by construction (lease ids, numbers, hold members made of both), so a
string's length is its length in bytes; names (keys) may be any text and are encoded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import hiredis

from . import scripts
from .base import Ask, Done

BODIES = {
    "admit": scripts.ADMIT,
    "release": scripts.RELEASE,
    "renew": scripts.RENEW,
    "state": scripts.STATE,
    "rebuild": scripts.REBUILD,
    "fail": scripts.FAIL,
    "locks": scripts.LOCKS,
}
SHAS = {name: hashlib.sha1(body.encode()).hexdigest() for name, body in BODIES.items()}  # noqa: S324
LOAD = [("SCRIPT", "LOAD", body) for body in BODIES.values()]
SHAPES_KEPT = 10_000  # shapes cached (a few per key with limits); past this the cache starts over


def num(x: float) -> str:
    """A float as the scripts read it (``repr``: the shortest string that reads back the same)."""
    return repr(float(x))


def _bulk(value: str) -> bytes:
    data = value.encode()
    return b"$%d\r\n%b\r\n" % (len(data), data)


class Shaped:
    """One script call's constant part, packed: ``pack(changing)`` is the whole command. An admit's
    shape also names the keys its leases live in: its gates' (``leased``) and its budgets' holds
    (``held``), for renewing them."""

    __slots__ = ("_head", "held", "leased")

    def __init__(
        self,
        script: str,
        keys: Sequence[str],
        constants: Sequence[str],
        changing: int,
        leased: Sequence[str] = (),
        held: Sequence[str] = (),
    ) -> None:
        self.leased, self.held = tuple(leased), tuple(held)
        count = 3 + len(keys) + len(constants) + changing
        parts = [b"*%d\r\n" % count, _bulk("EVALSHA"), _bulk(SHAS[script]), _bulk(str(len(keys)))]
        parts += [_bulk(k) for k in keys]
        parts += [_bulk(c) for c in constants]
        self._head = b"".join(parts)

    def pack(self, changing: Sequence[str]) -> bytes:
        return self._head + "".join([f"${len(v)}\r\n{v}\r\n" for v in changing]).encode()


class Shapes:
    """The packed shapes of the calls made, by what makes them (bounded: see :data:`SHAPES_KEPT`)."""

    def __init__(self, prefix: str, lease_ms: int) -> None:
        self._prefix = prefix
        self._lease_ms = str(lease_ms)
        self._marker = prefix + "loaded"
        self._kept: dict[Hashable, Shaped] = {}

    def _get(self, key: Hashable, make: Callable[[], Shaped]) -> Shaped:
        shaped = self._kept.get(key)
        if shaped is None:
            if len(self._kept) >= SHAPES_KEPT:
                self._kept.clear()
            shaped = self._kept[key] = make()
        return shaped

    def admit(self, ask: Ask, kept: bool = False) -> Shaped:
        """``kept``: holds with no lease (they never expire; only budgets, no gates)."""
        key = (
            "admit",
            tuple(ask.rates),
            tuple(ask.gates),
            tuple(ask.budgets),
            tuple(ask.budget_limits),
            kept,
        )
        return self._get(key, lambda: self._admit(ask, kept))

    def _admit(self, ask: Ask, kept: bool) -> Shaped:
        p = self._prefix
        keys = [p + "r:" + r.name for r in ask.rates]
        keys += [p + "c:" + name for name, _ in ask.gates]
        for name in ask.budgets:
            keys += (p + "b:" + name, p + "bh:" + name)
        if ask.budgets:
            keys.append(self._marker)
        lease_ms = "inf" if kept else self._lease_ms  # the script scores a hold at now + lease
        constants = [str(len(ask.rates)), str(len(ask.gates)), str(len(ask.budgets)), lease_ms]
        for rate in ask.rates:
            constants += (str(rate.limit), num(rate.period))
        constants += [str(cap) for _, cap in ask.gates]
        constants += [num(limit) for limit in ask.budget_limits]
        leased = [p + "c:" + name for name, _ in ask.gates]
        held = [p + "bh:" + name for name in ask.budgets]
        return Shaped("admit", keys, constants, 4 + len(ask.rates) + 2 * len(ask.budgets), leased, held)

    def release(self, done: Done) -> Shaped:
        key = ("release", tuple(done.gates), tuple(done.rates), tuple(done.budgets))
        return self._get(key, lambda: self._release(done))

    def _release(self, done: Done) -> Shaped:
        p = self._prefix
        keys = [p + "c:" + g for g in done.gates] + [p + "r:" + r.name for r in done.rates]
        for name in done.budgets:
            keys += (p + "b:" + name, p + "bh:" + name)
        constants = [str(len(done.gates)), str(len(done.rates)), str(len(done.budgets))]
        for rate in done.rates:
            constants += (str(rate.limit), num(rate.period))
        return Shaped("release", keys, constants, 2 + 2 * len(done.budgets))


def admit_args(ask: Ask, lease: str) -> list[str]:
    """The changing arguments of an admit call (in the order ``scripts.ADMIT`` reads them)."""
    out = [lease, str(ask.output), str(ask.need), str(ask.step)]
    out += [repr(float(c)) for c in ask.costs]
    for base, unit in zip(ask.base, ask.unit, strict=True):
        out += (repr(float(base)), repr(float(unit)))
    return out


def release_args(done: Done) -> list[str]:
    """The changing arguments of a release call (in the order ``scripts.RELEASE`` reads them)."""
    out = [done.lease or "", repr(float(done.delta))]
    holds, spent = done.holds, done.spent
    for i in range(len(done.budgets)):
        out += (holds[i] if i < len(holds) else "", repr(float(spent[i])))
    return out


def packed(script: str, keys: Sequence[str], args: Sequence[Any]) -> bytes:
    """A call made rarely (renewals, lockouts, state, rebuild), packed whole."""
    return bytes(hiredis.pack_command(("EVALSHA", SHAS[script], len(keys), *keys, *args)))
