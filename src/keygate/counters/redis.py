"""Counters in Redis, shared by every gateway instance: exact limits and budgets across all of them.

Every decision is one Lua script (``scripts.py``), called by EVALSHA on Redis's clock (sent the
scripts and called once more when Redis answers NOSCRIPT, after a restart). :meth:`RedisCounters.admit`
decides all of a request's gates, rates and budget holds in one round trip; what finished requests
give back (:meth:`RedisCounters.release`, and failed authentications) is sent at once and never
waited for (``updates.py``). Calls are packed once per shape and finished per request
(``commands.py``), and written on one pipelined connection (``resp.py``), so a request costs its
gateway little more than the two commands it sends.

Concurrency slots and budget holds are leases: they expire ``lease`` seconds after they were taken
or last renewed, and a background task renews the leases of this instance's requests in flight
every ``lease / 3`` seconds (one script call for all of them), so an instance that dies frees its
slots, and has its holds charged, within ``lease`` seconds.

When the server cannot be reached (or does not answer within ``timeout``), deciding calls raise
:class:`~keygate.counters.base.CountersUnavailable` and the guards answer 503 (or admit, with
``on_counter_failure: open``); updates wait and are sent when it is back. The client reconnects by
itself on the next call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from ..types import Secret
from .base import Admitted, Ask, BudgetShort, CountersUnavailable, Done, Refused, Settled
from .commands import LOAD, Shaped, Shapes, admit_args, packed, release_args
from .lockouts import LocalLockouts
from .redis_calls import CallByCall
from .resp import ReplyError, RespClient, RespConnectionError
from .updates import Updates

log = logging.getLogger("keygate.counters")


class _Loud:
    """A warning logged at most once per ``every`` seconds, with how many were left out."""

    def __init__(self, every: float = 10.0) -> None:
        self._every = every
        self._last = -1e9
        self._skipped = 0

    def warn(self, message: str, **extra: Any) -> None:
        now = time.monotonic()
        if now - self._last < self._every:
            self._skipped += 1
            return
        log.warning(message, extra={**extra, "suppressed": self._skipped})
        self._last, self._skipped = now, 0


class RedisCounters(CallByCall):
    """The :class:`~keygate.counters.base.Counters` and
    :class:`~keygate.counters.base.SharedCounters` protocols on a Redis server."""

    shared = True

    def __init__(
        self,
        url: str,
        *,
        password: Secret | None = None,
        ca_file: Path | None = None,
        prefix: str = "keygate:",
        lease: float = 15.0,
        timeout: float = 2.0,
        load_spend: Callable[[], Mapping[str, float]] | None = None,
    ) -> None:
        self._prefix = prefix
        self.lease = lease
        self._lease_ms = int(lease * 1000)
        self._load_spend = load_spend
        # rediss://: the server's certificate is checked against the system's CAs, or ca_file's.
        tls: dict[str, Any] = {"ssl_ca_certs": str(ca_file)} if ca_file is not None else {}
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            **tls,
            password=password.reveal() if password is not None else None,
            max_connections=64,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            decode_responses=True,
            # A pooled connection found dead (Redis restarted) is replaced and the command sent
            # once more. (Should a connection break after Redis ran a script, the script runs
            # twice: docs/redis.md says what that can cost.)
            retry=Retry(NoBackoff(), 1),
            retry_on_error=[RedisConnectionError],
        )
        self._redis = aioredis.Redis(connection_pool=pool)  # for pub/sub only (not per request)
        self._resp = RespClient(url, password.reveal() if password is not None else None, timeout, ca_file)
        self._shapes = Shapes(prefix, self._lease_ms)
        self._instance = secrets.token_hex(6)
        self._seq = 0
        self._loud = _Loud()
        self._updates = Updates(self._resp, self._load_scripts, self._loud.warn)
        self._active: dict[str, tuple[Shaped, list[str]]] = {}  # lease -> its shape, its holds
        self._mine: dict[str, list[str]] = {}  # gate or budget -> leases / holds taken by take/reserve
        self._tasks: list[asyncio.Task[None]] = []
        self._rebuilding = asyncio.Lock()
        self.lockouts = LocalLockouts()  # the locks every instance announced, and a fallback count
        self._channel = prefix + "locks"
        self._marker = prefix + "loaded"
        self._closing = False
        self.round_trips = 0  # deciding calls made (for measuring; never reset)

    # -- the connection and the scripts --------------------------------------------------------

    async def start(self) -> None:
        """Start the background work; Redis need not be up yet (it is retried)."""
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._updates.run(), name="keygate-counters-flush"),
            loop.create_task(self._renewer(), name="keygate-counters-renew"),
            loop.create_task(self._watch_locks(), name="keygate-counters-locks"),
        ]

    async def close(self, grace: float = 5.0) -> None:
        """Send what is queued (waiting at most ``grace`` seconds), then stop and disconnect."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.drain(), grace)
        self._closing = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # (a read inside redis-py may swallow one cancellation: the loops also see _closing)
            await asyncio.wait(self._tasks, timeout=3.0)
        self._tasks = []
        self._resp.close()
        await self._redis.aclose()

    async def drain(self) -> None:
        """Wait until every release and failure was sent and answered."""
        await self._updates.drain()

    async def ready(self) -> bool:
        """Redis answers a PING now (the readiness check)."""
        try:
            return bool(await self._resp.call("PING") == "PONG")
        except (RespConnectionError, ReplyError):
            return False

    async def _load_scripts(self) -> None:
        """Send Redis every script (it lost them: it restarted, or was never sent them)."""
        for reply in await self._resp.pipeline(LOAD):
            if isinstance(reply, ReplyError):
                raise reply

    async def _run(self, data: bytes) -> Any:
        """One packed script call's reply: one round trip (two after Redis lost its scripts)."""
        self.round_trips += 1
        resp = self._resp
        try:
            reply = await resp.request(data)
            if isinstance(reply, ReplyError) and str(reply).startswith("NOSCRIPT"):
                await self._load_scripts()
                reply = await resp.request(data)
        except (RespConnectionError, ReplyError) as exc:
            raise CountersUnavailable(f"redis: {exc}") from None
        if isinstance(reply, ReplyError):
            raise CountersUnavailable(f"redis: script failed: {reply}")
        return reply

    async def _call(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """A script called rarely (not once per request), packed whole."""
        return await self._run(packed(name, keys, args))

    def _lease(self) -> str:
        self._seq += 1
        return f"{self._instance}.{self._seq}"

    # -- deciding: one round trip ---------------------------------------------------------------

    async def _decide(self, data: bytes) -> Any:
        """An admit call's reply, the budgets rebuilt first if Redis had lost them."""
        got = await self._run(data)
        if got[0] == "noload":
            await self._rebuild()
            got = await self._run(data)
        return got

    async def admit(self, ask: Ask, now: float) -> Admitted | Refused | BudgetShort:
        lease = self._lease()
        rates, gates = ask.rates, ask.gates
        shaped = self._shapes.admit(ask)
        got = await self._decide(shaped.pack(admit_args(ask, lease)))
        kind = got[0]
        if kind == "ok":
            afters = [now + float(x) for x in got[3 : 3 + len(rates)]]
            holds = list(got[3 + len(rates) :])
            if shaped.leased or shaped.held:
                self._active[lease] = (shaped, holds)
            return Admitted(lease, afters, int(got[2]), holds, now)
        if kind == "gate":
            return Refused(gate=gates[int(got[1]) - 1][0])
        if kind == "rate":
            pairs = got[3:]
            return Refused(
                float(got[2]),
                rates[int(got[1]) - 1],
                [int(pairs[i]) for i in range(0, len(pairs), 2)],
                [float(pairs[i]) for i in range(1, len(pairs), 2)],
            )
        if kind == "budget":
            return BudgetShort(int(got[1]) - 1)
        raise CountersUnavailable(f"redis: unexpected answer {kind!r}")  # (the budgets were not loaded)

    async def hold(
        self, names: Sequence[str], limits: Sequence[float], amounts: Sequence[float]
    ) -> list[str] | int:
        ask = Ask(budgets=names, budget_limits=limits, base=amounts, unit=[0.0] * len(names))
        # Scored at +inf: no expiry drops them and no renewal touches them (not in _active).
        got = await self._decide(self._shapes.admit(ask, kept=True).pack(admit_args(ask, self._lease())))
        if got[0] == "ok":
            return list(got[3:])
        if got[0] == "budget":
            return int(got[1]) - 1
        raise CountersUnavailable(f"redis: unexpected answer {got[0]!r}")

    async def _rebuild(self) -> None:
        """Redis has no budget counters (it restarted empty): add the persisted spend, once."""
        async with self._rebuilding:
            try:
                if await self._resp.call("EXISTS", self._marker):
                    return
            except (RespConnectionError, ReplyError) as exc:
                raise CountersUnavailable(f"redis: {exc}") from None
            spent = dict(self._load_spend()) if self._load_spend is not None else {}
            keys = [self._marker] + [self._prefix + "b:" + n for n in spent]
            done = await self._call("rebuild", keys, [repr(float(v)) for v in spent.values()])
            if done:
                log.warning("budget counters rebuilt from the store", extra={"counters": len(spent)})

    # -- settling: queued, sent in the background -----------------------------------------------

    def release(self, done: Done, settled: Settled | None = None) -> None:
        if done.lease is not None:
            self._active.pop(done.lease, None)
        then = None
        if settled is not None:

            def then(got: Any) -> None:
                settled([(float(got[i]), float(got[i + 1])) for i in range(0, len(got), 2)])

        self._updates.send("release", self._shapes.release(done).pack(release_args(done)), then)

    async def _renewer(self) -> None:
        """Every ``lease / 3`` seconds, extend the leases of this instance's requests in flight."""
        while True:
            await asyncio.sleep(self.lease / 3)
            held = [
                entry
                for lease, (shaped, holds) in list(self._active.items())
                for entry in [(key, lease, True) for key in shaped.leased]
                + [(key, hold, False) for key, hold in zip(shaped.held, holds, strict=True)]
            ]
            for start in range(0, len(held), 1000):
                chunk = held[start : start + 1000]
                args: list[Any] = [self._lease_ms]
                for _, member, gate in chunk:
                    args += (member, "1" if gate else "0")
                try:
                    await self._call("renew", [key for key, _, _ in chunk], args)
                except CountersUnavailable:
                    self._loud.warn("redis unreachable: leases not renewed")
                    break

    # -- lockouts ------------------------------------------------------------------------------

    def fail(
        self,
        name: str,
        window: float,
        max_failures: int,
        duration: float,
        on_locked: Callable[[str], None] | None = None,
    ) -> bool:
        # Counted here too: while Redis is away, the lockout still holds per instance.
        self.lockouts.fail(name, window, max_failures, duration)
        p = self._prefix
        args = [name, int(window * 1000), max_failures, int(duration * 1000), self._lease(), self._channel]

        def then(ms: Any) -> None:
            if int(ms) > 0:
                self.lockouts.lock(name, int(ms) / 1000)
                if on_locked is not None:
                    on_locked(name)

        self._updates.send("fail", packed("fail", [p + "lf:" + name, p + "lk"], args), then)
        return False

    def locked(self, name: str) -> float:
        return self.lockouts.locked(name)

    async def _watch_locks(self) -> None:
        """Mirror the lockouts every instance announces: the current ones on (re)connecting, then
        each new one as it is published; and every 5 s as a safety net for a lost message."""
        while not self._closing:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                await self._load_locks()
                last = time.monotonic()
                while not self._closing:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        name, _, ms = str(message["data"]).rpartition(" ")
                        self.lockouts.lock(name, int(ms) / 1000)
                    if time.monotonic() - last >= 5.0:
                        await self._load_locks()
                        last = time.monotonic()
            except (RedisError, OSError, CountersUnavailable, ValueError):
                self._loud.warn("redis unreachable: lockouts not shared until it is back")
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _load_locks(self) -> None:
        got = await self._call("locks", [self._prefix + "lk"], [])
        for i in range(0, len(got), 2):
            self.lockouts.lock(got[i], int(got[i + 1]) / 1000)
