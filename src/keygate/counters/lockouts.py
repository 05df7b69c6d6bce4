"""Failed authentications per client address, and the addresses locked out, kept in process.

:class:`~keygate.counters.memory.MemoryCounters` keeps lockouts here; the Redis counters keep the
shared count in Redis and use this too, as the local mirror of the locks every instance announces
and as the fallback count while Redis cannot be reached (brute-force protection then holds per
instance instead of not at all).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

_MAX_TRACKED = 100_000  # bound memory under a spray from many addresses


class LocalLockouts:
    __slots__ = ("_failures", "_locked")

    def __init__(self) -> None:
        self._failures: dict[str, deque[float]] = {}
        self._locked: dict[str, float] = {}  # address -> end of its lockout (monotonic s)

    def locked(self, name: str) -> float:
        """Seconds left of ``name``'s lockout, 0.0 when it is not locked out."""
        until = self._locked.get(name)
        if until is None:
            return 0.0
        left = until - time.monotonic()
        if left <= 0.0:
            del self._locked[name]
            return 0.0
        return left

    def lock(self, name: str, seconds: float) -> None:
        """``name`` is locked out for ``seconds`` from now (announced by another instance)."""
        if len(self._locked) >= _MAX_TRACKED:
            self._prune(time.monotonic(), 0.0)
        until = time.monotonic() + seconds
        if self._locked.get(name, 0.0) < until:
            self._locked[name] = until

    def fail(
        self,
        name: str,
        window: float,
        max_failures: int,
        duration: float,
        on_locked: Callable[[str], None] | None = None,
    ) -> bool:
        """Count one failure of ``name``; True (and ``on_locked(name)``) when it locks ``name`` out."""
        now = time.monotonic()
        failures = self._failures.get(name)
        if failures is None:
            if len(self._failures) >= _MAX_TRACKED:
                self._prune(now, window)
            failures = self._failures[name] = deque()
        failures.append(now)
        while failures and failures[0] <= now - window:
            failures.popleft()
        if len(failures) < max_failures or self.locked(name):
            return False
        if len(self._locked) >= _MAX_TRACKED:
            self._prune(now, window)
        self._locked[name] = now + duration
        del self._failures[name]
        if on_locked is not None:
            on_locked(name)
        return True

    def _prune(self, now: float, window: float) -> None:
        """Forget failures past their window and lockouts that are over (a spray from many
        addresses must not grow either without bound)."""
        horizon = now - window
        for name in [n for n, w in self._failures.items() if not w or w[-1] <= horizon]:
            del self._failures[name]
        if len(self._failures) >= _MAX_TRACKED:
            self._failures.clear()
        for name in [n for n, until in self._locked.items() if until <= now]:
            del self._locked[name]
