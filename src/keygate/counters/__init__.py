"""Counters: rate limits, concurrency gates, budgets in flight and lockouts, behind one protocol."""

from .base import (
    Admitted,
    Ask,
    BudgetShort,
    Counters,
    CountersUnavailable,
    Done,
    Rate,
    Refused,
    SharedCounters,
    SyncCounters,
    Taken,
)
from .memory import MemoryCounters

__all__ = [
    "Admitted",
    "Ask",
    "BudgetShort",
    "Counters",
    "CountersUnavailable",
    "Done",
    "MemoryCounters",
    "Rate",
    "Refused",
    "SharedCounters",
    "SyncCounters",
    "Taken",
]
