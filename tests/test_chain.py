"""keygate.chain: the order check, the phases, and the default chain (plain request phases are called
without a coroutine; only guards that wait are async)."""

from __future__ import annotations

import asyncio
import inspect
import os
from pathlib import Path

import pytest
import yaml

from keygate.chain import FROM_APP, Chain, Guard, check_order
from keygate.config import Settings, ensure_pepper, load_settings
from keygate.context import Context
from keygate.counters import MemoryCounters, SyncCounters
from keygate.errors import KeygateError
from keygate.guards import Parts, default_guards
from keygate.guards.budget import AsyncBudgetGuard, budget_guard
from keygate.guards.global_limits import QueuedGlobalLimit, global_limit
from keygate.guards.ratelimit import AsyncRateLimit, rate_limit
from keygate.limitconf import GlobalLimits
from keygate.spend import SpendBook
from keygate.testing import context


def _settings(tmp_path: Path, extra: dict[str, object]) -> Settings:
    cfg = tmp_path / "keygate.yaml"
    base = {
        "database_url": "sqlite:///keygate.db",
        "upstreams": {"openai": {"base_url": "http://127.0.0.1:9/v1", "api_key": "${OPENAI_API_KEY}"}},
    }
    cfg.write_text(yaml.safe_dump({**base, **extra}))
    return ensure_pepper(load_settings(cfg, {**os.environ, "OPENAI_API_KEY": "sk-test"}))


def _chain(tmp_path: Path, extra: dict[str, object]) -> list[str]:
    settings = _settings(tmp_path, extra)
    counters = MemoryCounters()
    parts = Parts(settings, None, None, counters, SpendBook(counters, None, 1.0))  # type: ignore[arg-type]
    chain = Chain(default_guards(parts))
    return [g.name for g in chain.guards if inspect.iscoroutinefunction(g.request)]


def test_only_the_body_read_awaits_by_default(tmp_path: Path) -> None:
    limits = {"defaults": {"rpm": 10, "tpm": 1000, "max_concurrent": 5, "budget_usd": "10/month"}}
    extra = {"limits": {**limits, "global": {"rps": 10, "max_concurrent": 5}}}
    assert _chain(tmp_path, extra) == ["body"]


class _AsyncOnly:
    """Counters without the plain fast path, as a networked implementation would be."""

    def __getattr__(self, name: str) -> object:
        if name.endswith("_now"):
            raise AttributeError(name)
        return getattr(MemoryCounters(), name)


def test_counters_without_a_fast_path_get_awaiting_guards(tmp_path: Path) -> None:
    settings_dir = tmp_path
    cfg = settings_dir / "keygate.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "database_url": "sqlite:///keygate.db",
                "upstreams": {
                    "openai": {"base_url": "http://127.0.0.1:9/v1", "api_key": "${OPENAI_API_KEY}"}
                },
            }
        )
    )
    limits = load_settings(cfg, {**os.environ, "OPENAI_API_KEY": "sk-test"}).limits
    slow = _AsyncOnly()
    assert isinstance(MemoryCounters(), SyncCounters) and not isinstance(slow, SyncCounters)
    assert isinstance(rate_limit(slow, limits), AsyncRateLimit)  # type: ignore[arg-type]
    assert isinstance(budget_guard(slow, limits, None), AsyncBudgetGuard)  # type: ignore[arg-type]
    assert isinstance(global_limit(GlobalLimits(rps=5, queue=3)), QueuedGlobalLimit)
    assert not isinstance(global_limit(GlobalLimits(rps=5)), QueuedGlobalLimit)


# --- check_order: every field a guard reads is provided before it ---------------------------------


def _guard(
    name: str,
    needs: frozenset[str] | set[str] = frozenset(),
    provides: frozenset[str] | set[str] = frozenset(),
) -> Guard:
    cls = type(name, (Guard,), {"name": name, "needs": frozenset(needs), "provides": frozenset(provides)})
    guard: Guard = cls()
    return guard


def test_check_order_refuses_a_need_nothing_earlier_provides() -> None:
    auth = _guard("auth", {"headers"}, {"key", "team"})
    policy = _guard("policy", {"key", "team", "client_addr"})
    with pytest.raises(ValueError) as info:
        check_order([auth, policy])
    assert str(info.value) == "guard 'policy' needs client_addr, which no earlier guard provides"
    client_ip = _guard("client_ip", provides={"client_ip", "client_addr"})
    check_order([client_ip, auth, policy])  # the same guards, in an order that works
    with pytest.raises(ValueError, match="guard 'policy' needs client_addr"):
        check_order([auth, policy, client_ip])  # provided, but too late
    with pytest.raises(ValueError, match="guard 'policy' needs client_addr, key, team"):
        Chain([policy])  # the chain checks when it is built


def test_the_app_provides_the_request_itself() -> None:
    check_order([_guard("reads_the_request", set(FROM_APP))])
    with pytest.raises(ValueError, match="needs body"):
        check_order([_guard("reads_the_body", {"route", "body"})])


def test_default_guards_order(tmp_path: Path) -> None:
    settings = _settings(tmp_path, {})
    counters = MemoryCounters()
    parts = Parts(settings, None, None, counters, SpendBook(counters, None, 1.0))  # type: ignore[arg-type]
    guards = default_guards(parts)
    assert [g.name for g in guards] == [
        "record",
        "rotation_watch",
        "client_ip",
        "lockout",
        "auth",
        "honeytoken",
        "policy",
        "body",
        "request_policy",
        "prompt_scan",
        "ratelimit",
        "budget",
        "global",
    ]
    check_order(guards)
    # Each guard's needs are there by its turn, and each provider comes before its first reader.
    provided = set(FROM_APP)
    for g in guards:
        assert g.needs <= provided, g.name
        provided |= g.provides


# --- the phases ---------------------------------------------------------------------------------


class Log(Guard):
    def __init__(self, name: str, log: list[str], reject: bool = False) -> None:
        self.label, self.log, self.reject = name, log, reject

    def request(self, ctx: Context) -> KeygateError | None:
        self.log.append(f"request {self.label}")
        return KeygateError(self.label) if self.reject else None

    def response_start(self, ctx: Context, status: int, headers: list[tuple[str, str]]) -> None:
        self.log.append(f"start {self.label} {status}")

    def complete(self, ctx: Context) -> None:
        self.log.append(f"complete {self.label}")

    async def start(self) -> None:
        self.log.append(f"up {self.label}")

    async def stop(self) -> None:
        self.log.append(f"down {self.label}")


class Waits(Guard):
    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def request(self, ctx: Context) -> KeygateError | None:
        await asyncio.sleep(0)
        self.log.append("request waits")
        return None


class Cuts(Guard):
    def chunk(self, ctx: Context, data: bytes) -> KeygateError | None:
        return KeygateError("cut") if b"stop" in data else None


class Broken(Guard):
    def complete(self, ctx: Context) -> None:
        raise RuntimeError("bug")


def test_phases_run_in_order_and_complete_unwinds() -> None:
    log: list[str] = []
    chain = Chain([Log("a", log), Waits(log), Broken(), Log("b", log)])
    ctx = context()
    assert asyncio.run(chain.request(ctx)) is None
    chain.response_start(ctx, 200, [])
    chain.complete(ctx)  # Broken raises: logged, and "a" still completes
    assert log == [
        "request a",
        "request waits",
        "request b",
        "start a 200",
        "start b 200",
        "complete b",
        "complete a",
    ]
    log.clear()
    asyncio.run(chain.start())
    asyncio.run(chain.stop())
    assert log == ["up a", "up b", "down b", "down a"]


def test_the_first_rejection_stops_the_request_phase() -> None:
    log: list[str] = []
    chain = Chain([Log("a", log), Log("no", log, reject=True), Log("c", log)])
    err = asyncio.run(chain.request(context()))
    assert err is not None and err.message == "no"
    assert log == ["request a", "request no"]


def test_only_overridden_phases_are_called() -> None:
    log: list[str] = []
    quiet = Chain([Log("a", log)])
    assert not quiet.watches_chunks and quiet.chunk(context(), b"stop") is None
    chain = Chain([Cuts(), Log("a", log)])
    assert chain.watches_chunks
    assert chain.chunk(context(), b"go on") is None
    cut = chain.chunk(context(), b"stop now")
    assert cut is not None and cut.message == "cut"
    # A guard that overrides nothing costs nothing: it is in no phase.
    assert Chain([Guard()])._request == () and Chain([Guard()])._complete == ()


def test_the_base_guard_does_nothing() -> None:
    guard, ctx = Guard(), context()
    assert guard.request(ctx) is None and guard.chunk(ctx, b"x") is None
    guard.response_start(ctx, 200, [])
    guard.complete(ctx)
    asyncio.run(guard.start())
    asyncio.run(guard.stop())
    assert (guard.name, guard.needs, guard.provides) == ("guard", frozenset(), frozenset())
