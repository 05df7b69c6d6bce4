"""Per-key and per-team baselines, learned online, and the short windows the detectors read.

A :class:`KeyState` keeps two kinds of data:

- the **baseline** (persisted by :meth:`KeyState.dump`, loaded by :meth:`KeyState.load`): the
  networks, user-agent families, models and routes the key used; the hours of the day it was
  active in; per hour of the week and per hour of the day the mean requests and tokens per hour
  (exponentially weighted) and the highest request and token counts of any five minutes; the
  highest five-minute count of policy denials; the largest prompt;
- the **windows** (memory only): per-minute and per-hour counts of the last hours, networks
  first seen recently, pending novelties, cool-downs of detectors that fired.

Plain numbers and dicts with caps, so that one key costs a few kilobytes at most and a snapshot
is a small JSON document. :class:`TeamState` holds what a team's keys share (networks, models):
a colleague's network is not new for a key of the same team.
"""

from __future__ import annotations

from typing import Any, Final

HOURS_OF_WEEK: Final = 168
MAX_SET: Final = 64  # networks, agents, models, routes kept per key (the most recent win)
MONDAY_OFFSET: Final = 72  # hours from the epoch (a Thursday) back to a Monday 00:00 UTC


def hour_of_week(ts: float) -> int:
    return (int(ts // 3600) + MONDAY_OFFSET) % HOURS_OF_WEEK


def hour_of_day(ts: float) -> int:
    return int(ts // 3600) % 24


def remember(seen: dict[str, float], value: str, ts: float, cap: int = MAX_SET) -> None:
    """Mark ``value`` seen at ``ts``, forgetting the least recently seen beyond ``cap``."""
    seen[value] = ts
    if len(seen) > cap:
        del seen[min(seen, key=seen.__getitem__)]


def grow(old: float, seen: float, learned: bool) -> float:
    """A peak after seeing ``seen``: any value while learning; after it, at most a tenth more plus
    one per step (a five-minute block, an hour), so that a ramp cannot teach the baseline an
    attack's rate before a detector sees it."""
    if seen <= old:
        return old
    return float(seen) if not learned else min(float(seen), 1.1 * old + 1)


class KeyState:
    __slots__ = (
        "agents",
        "block",
        "block_flagged",
        "closed_hour",
        "cooldown",
        "deny_peak5",
        "first",
        "hod_active",
        "hod_mean",
        "hod_peak",
        "hour_flagged",
        "hours",
        "how_mean",
        "how_peak",
        "last",
        "minutes",
        "models",
        "n",
        "nets",
        "new_nets",
        "odd",
        "peak5",
        "peak_long",
        "pending",
        "prompt_max",
        "quarantined",
        "routes",
        "team",
        "tpeak5",
    )

    def __init__(self, first: float, team: str | None = None) -> None:
        self.first = first
        self.last = first
        self.n = 0
        self.team = team
        self.nets: dict[str, float] = {}
        self.agents: dict[str, float] = {}
        self.models: dict[str, float] = {}
        self.routes: dict[str, float] = {}
        self.hod_active = [0] * 24
        self.how_mean = [[0.0, 0.0] for _ in range(HOURS_OF_WEEK)]  # requests, tokens per hour
        self.hod_mean = [[0.0, 0.0] for _ in range(24)]
        self.how_peak = [0.0] * HOURS_OF_WEEK  # highest 5-minute request count in that hour
        self.hod_peak = [0.0] * 24
        self.peak5 = 0.0  # highest 5-minute request count ever
        self.tpeak5 = 0.0  # highest 5-minute token count ever
        self.deny_peak5 = 0.0
        self.peak_long = [0.0, 0.0]  # highest requests, tokens of any long window (slow exfiltration)
        self.prompt_max = 0
        self.closed_hour = -1  # the last hour folded into the means
        # windows (memory only)
        self.minutes: dict[int, list[int]] = {}  # minute -> [requests, tokens, denials]
        self.hours: dict[int, list[int]] = {}  # hour -> [requests, tokens]
        self.hour_flagged: set[int] = set()  # hours with an event: not learned from
        self.new_nets: dict[str, float] = {}  # networks new after learning -> first seen
        self.pending: dict[tuple[str, str], list[float]] = {}  # novelty -> times seen
        self.odd: list[float] = []  # requests at never-active hours
        self.cooldown: dict[str, float] = {}  # detector:subject -> quiet until
        self.quarantined = False
        self.block = -1  # the five-minute block being counted, and whether an event fired in it
        self.block_flagged = False

    def learned(self, now: float, period: float, min_requests: int) -> bool:
        return now - self.first >= period and self.n >= min_requests

    def see(self, kind: str, value: str, ts: float) -> None:
        remember(getattr(self, kind), value, ts)

    # -- windows -------------------------------------------------------------------------------

    def add(self, ts: float, tokens: int, denied: bool) -> None:
        minute = int(ts // 60)
        bucket = self.minutes.get(minute)
        if bucket is None:
            bucket = self.minutes[minute] = [0, 0, 0]
        bucket[0] += 1
        bucket[1] += tokens
        if denied:
            bucket[2] += 1
        hour = int(ts // 3600)
        hb = self.hours.get(hour)
        if hb is None:
            hb = self.hours[hour] = [0, 0]
        hb[0] += 1
        hb[1] += tokens

    def window(self, now: float, seconds: float) -> tuple[int, int, int]:
        """Requests, tokens and denials in the last ``seconds`` (whole minutes, the current one in)."""
        start = int(now // 60) - max(1, int(seconds // 60)) + 1
        r = t = d = 0
        for minute, (a, b, c) in self.minutes.items():
            if minute >= start:
                r += a
                t += b
                d += c
        return r, t, d

    def hours_window(self, now: float, seconds: float) -> tuple[int, int, float, float]:
        """Requests and tokens in the last ``seconds`` (whole hours), and what the baseline expects
        for those hours (the larger of the hour-of-week and hour-of-day means)."""
        current = int(now // 3600)
        count = max(1, int(seconds // 3600))
        r = t = 0
        er = et = 0.0
        for hour in range(current - count + 1, current + 1):
            hb = self.hours.get(hour)
            if hb is not None:
                r += hb[0]
                t += hb[1]
            ts = hour * 3600.0
            w, d = self.how_mean[hour_of_week(ts)], self.hod_mean[hour_of_day(ts)]
            er += max(w[0], d[0])
            et += max(w[1], d[1])
        return r, t, er, et

    def prune(self, now: float, minutes: float, hours: float, learned: bool = False) -> None:
        """Drop per-minute counts older than ``minutes`` seconds; fold the hours that left the long
        window (``hours`` seconds) into the hourly means, and drop them a window later.

        An hour is learned only once it has left the window the slow-exfiltration detector reads,
        so a sustained attack is never part of the baseline it is compared with.
        """
        minute = int(now // 60) - int(minutes // 60) - 1
        for m in [m for m in self.minutes if m < minute]:
            del self.minutes[m]
        long_hours = max(1, int(hours // 3600))
        current = int(now // 3600)
        self.close_hours(current - long_hours, long_hours, learned)
        hour = current - 2 * long_hours - 1
        for h in [h for h in self.hours if h < hour]:
            del self.hours[h]
        self.hour_flagged = {h for h in self.hour_flagged if h >= hour}
        self.cooldown = {k: until for k, until in self.cooldown.items() if until > now}

    def close_hours(self, current: int, long_hours: int = 6, learned: bool = False) -> None:
        """Fold every finished hour since the last one into the hourly means (idle hours as 0),
        and the long window ending with it into the long-window peaks."""
        start = self.closed_hour + 1 if self.closed_hour >= 0 else int(self.first // 3600)
        if current - start > HOURS_OF_WEEK:  # idle for more than a week: fold the last week only
            start = current - HOURS_OF_WEEK
        for hour in range(start, current):
            if hour in self.hour_flagged:
                continue
            hb = self.hours.get(hour, (0, 0))
            ts = hour * 3600.0
            week_slot = self.how_mean[hour_of_week(ts)]
            day_slot = self.hod_mean[hour_of_day(ts)]
            for i in (0, 1):
                # A slot's first week sets it; later weeks move it by a third. The hour-of-day
                # mean moves by a fifth each day.
                first_week = hour - int(self.first // 3600) < HOURS_OF_WEEK
                week_slot[i] = float(hb[i]) if first_week else week_slot[i] * (2 / 3) + hb[i] / 3
                day_slot[i] = day_slot[i] * 0.8 + hb[i] * 0.2
            for i in (0, 1):
                total = sum(
                    self.hours[h][i] for h in range(hour - long_hours + 1, hour + 1) if h in self.hours
                )
                self.peak_long[i] = grow(self.peak_long[i], total, learned)
        self.closed_hour = max(self.closed_hour, current - 1)

    # -- persistence ---------------------------------------------------------------------------

    def dump(self) -> dict[str, Any]:
        return {
            "first": self.first,
            "last": self.last,
            "n": self.n,
            "team": self.team,
            "nets": self.nets,
            "agents": self.agents,
            "models": self.models,
            "routes": self.routes,
            "hod_active": self.hod_active,
            "how_mean": [[round(a, 3), round(b, 1)] for a, b in self.how_mean],
            "hod_mean": [[round(a, 3), round(b, 1)] for a, b in self.hod_mean],
            "how_peak": self.how_peak,
            "hod_peak": self.hod_peak,
            "peak5": self.peak5,
            "tpeak5": self.tpeak5,
            "deny_peak5": self.deny_peak5,
            "peak_long": self.peak_long,
            "prompt_max": self.prompt_max,
            "closed_hour": self.closed_hour,
        }

    @classmethod
    def load(cls, data: dict[str, Any]) -> KeyState:
        state = cls(float(data["first"]), data.get("team"))
        state.last = float(data.get("last", state.first))
        state.n = int(data.get("n", 0))
        for name in ("nets", "agents", "models", "routes"):
            setattr(state, name, {str(k): float(v) for k, v in dict(data.get(name, {})).items()})
        state.hod_active = [int(v) for v in data.get("hod_active", state.hod_active)][:24]
        state.how_mean = [[float(a), float(b)] for a, b in data.get("how_mean", state.how_mean)]
        state.hod_mean = [[float(a), float(b)] for a, b in data.get("hod_mean", state.hod_mean)]
        state.how_peak = [float(v) for v in data.get("how_peak", state.how_peak)]
        state.hod_peak = [float(v) for v in data.get("hod_peak", state.hod_peak)]
        state.peak5 = float(data.get("peak5", 0.0))
        state.tpeak5 = float(data.get("tpeak5", 0.0))
        state.deny_peak5 = float(data.get("deny_peak5", 0.0))
        state.peak_long = [float(v) for v in data.get("peak_long", [0.0, 0.0])][:2]
        state.prompt_max = int(data.get("prompt_max", 0))
        state.closed_hour = int(data.get("closed_hour", -1))
        if len(state.how_mean) != HOURS_OF_WEEK or len(state.hod_mean) != 24:
            raise ValueError("baseline has the wrong shape")
        return state


class TeamState:
    """What a team's keys share: networks and models one of them used are not new for the others;
    and the team's own request rate (all its keys together), with peaks learned like a key's."""

    __slots__ = (
        "block",
        "block_flagged",
        "cooldown",
        "first",
        "how_peak",
        "minutes",
        "models",
        "nets",
        "peak5",
    )

    def __init__(self, first: float = 0.0) -> None:
        self.first = first
        self.nets: dict[str, float] = {}
        self.models: dict[str, float] = {}
        self.peak5 = 0.0  # highest five-minute request count of the team's keys together
        self.how_peak = [0.0] * HOURS_OF_WEEK
        self.minutes: dict[int, int] = {}  # minute -> requests (memory only)
        self.block = -1
        self.block_flagged = False
        self.cooldown = 0.0  # no team event before this

    def add(self, ts: float) -> None:
        minute = int(ts // 60)
        self.minutes[minute] = self.minutes.get(minute, 0) + 1

    def window(self, now: float, seconds: float) -> int:
        start = int(now // 60) - max(1, int(seconds // 60)) + 1
        return sum(n for m, n in self.minutes.items() if m >= start)

    def learn(self, now: float, learned: bool, keep: float) -> None:
        """Fold the last finished five-minute block into the peaks (as KeyState's are learned)."""
        block = int(now // 300)
        if self.block >= 0 and block != self.block and not self.block_flagged:
            start = self.block * 5
            r = sum(n for m, n in self.minutes.items() if start <= m < start + 5)
            how = hour_of_week(self.block * 300.0)
            self.peak5 = grow(self.peak5, r, learned)
            self.how_peak[how] = grow(self.how_peak[how], r, learned)
        if block != self.block:
            self.block, self.block_flagged = block, False
        horizon = int(now // 60) - int(keep // 60) - 1
        for m in [m for m in self.minutes if m < horizon]:
            del self.minutes[m]

    def dump(self) -> dict[str, Any]:
        return {
            "first": self.first,
            "nets": self.nets,
            "models": self.models,
            "peak5": self.peak5,
            "how_peak": self.how_peak,
        }

    @classmethod
    def load(cls, data: dict[str, Any]) -> TeamState:
        state = cls(float(data.get("first", 0.0)))
        state.nets = {str(k): float(v) for k, v in dict(data.get("nets", {})).items()}
        state.models = {str(k): float(v) for k, v in dict(data.get("models", {})).items()}
        state.peak5 = float(data.get("peak5", 0.0))
        state.how_peak = [float(v) for v in data.get("how_peak", state.how_peak)]
        if len(state.how_peak) != HOURS_OF_WEEK:
            raise ValueError("baseline has the wrong shape")
        return state
