"""Counters: rate limits, concurrency gates and budgets in flight, behind one protocol."""

from .base import Counters, Rate, Refused, SyncCounters, Taken
from .memory import MemoryCounters

__all__ = ["Counters", "MemoryCounters", "Rate", "Refused", "SyncCounters", "Taken"]
