"""Limits are never silently per instance: a networked database without Redis refuses them."""

from __future__ import annotations

import pytest

from keygate.errors import ConfigError
from keygate.guards.per_instance import NEEDS_REDIS, NeedsSharedCounters, check_config
from keygate.limitconf import parse_limits
from keygate.testing import context, key_record

from .common import decide

PG = "postgresql://keygate@db.internal:5432/keygate"


def test_a_networked_database_without_redis_refuses_configured_limits() -> None:
    none = parse_limits({})
    check_config("sqlite:///keygate.db", parse_limits({"defaults": {"rpm": 10}}), True)  # one process
    check_config(PG, none, False)  # nothing to share
    for limits, lockout, named in (
        (parse_limits({"defaults": {"rpm": 10}}), False, "limits.defaults"),
        (parse_limits({"global": {"rps": 5}}), False, "limits.global"),
        (none, True, "network.lockout"),
    ):
        with pytest.raises(ConfigError, match="redis_url: required") as info:
            check_config(PG, limits, lockout)
        assert named in str(info.value) and "N times each limit" in str(info.value)


def test_a_key_with_stored_limits_is_refused_rather_than_counted_per_instance() -> None:
    guard = NeedsSharedCounters()
    limited = context(key=key_record("key_1", policy={"rpm": 5}))
    assert decide(guard, limited) is NEEDS_REDIS and NEEDS_REDIS.status == 503
    assert NEEDS_REDIS.code == "counters_unavailable"
    assert decide(guard, context(key=key_record("key_2", policy={"models": ["gpt-4o"]}))) is None
