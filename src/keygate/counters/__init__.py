"""Counters: rate limits, concurrency gates and budgets in flight, behind one protocol."""

from .base import Counters, Decision, Hold, Rate, SyncCounters
from .memory import MemoryCounters

__all__ = ["Counters", "Decision", "Hold", "MemoryCounters", "Rate", "SyncCounters"]
