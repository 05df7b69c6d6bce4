"""The chain calls plain request phases without a coroutine; only guards that wait are async."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import yaml

from keygate.chain import Chain
from keygate.config import ensure_pepper, load_settings
from keygate.counters import MemoryCounters, SyncCounters
from keygate.guards import Parts, default_guards
from keygate.guards.budget import AsyncBudgetGuard, budget_guard
from keygate.guards.global_limits import QueuedGlobalLimit, global_limit
from keygate.guards.ratelimit import AsyncRateLimit, rate_limit
from keygate.limitconf import GlobalLimits
from keygate.spend import SpendBook


def _chain(tmp_path: Path, extra: dict[str, object]) -> list[str]:
    cfg = tmp_path / "keygate.yaml"
    base = {
        "database_url": "sqlite:///keygate.db",
        "upstreams": {"openai": {"base_url": "http://127.0.0.1:9/v1", "api_key": "${OPENAI_API_KEY}"}},
    }
    cfg.write_text(yaml.safe_dump({**base, **extra}))
    settings = ensure_pepper(load_settings(cfg, {**os.environ, "OPENAI_API_KEY": "sk-test"}))
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
