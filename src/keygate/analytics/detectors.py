"""The anomaly event, and the detectors that read a key's windows against its baseline.

Each detector has one documented rule and one score (docs/anomalies.md has the table):

- **surge**: requests (or tokens) in the last ``window`` above ``factor`` times the key's
  baseline for the time, and at least ``threshold`` requests (tokens: 100 times that). The
  baseline is the largest of: the key's highest five-minute count in this hour of the week, in
  this hour of the day, and a quarter of its highest five-minute count ever (so an hour the key
  was never busy in is not empty). Score: observed / baseline.
- **slow_exfiltration**: requests (or tokens) over the last ``window`` (hours) at least
  ``factor`` times what the key's hourly means expect for those hours, and at least
  ``threshold`` requests (tokens: 100 times that). Catches sustained use that stays below a
  surge. Score: observed / expected.
- **denial_burst**: policy refusals (400, 403, 404, 413, 415, 429 answered by keygate itself)
  in ``window`` at least ``threshold`` and above ``factor`` times the key's highest five-minute
  count of them, or above twice that count when they are at least half of the key's requests
  in the window (probing is mostly refused). Score: observed / max(baseline, 1).

The novelty and authentication detectors work per request, in :mod:`keygate.analytics.engine`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..anomalyconf import AnomalySettings
from .baselines import KeyState, grow, hour_of_day, hour_of_week


@dataclass(slots=True)
class Event:
    """One anomaly: what fired, for which key (or address), why, and what was done."""

    ts: float
    detector: str
    key_id: str | None
    team_id: str | None
    subject: str  # the key, network, address or prefix the event is about
    score: float
    action: str  # the action the settings name for the detector
    evidence: dict[str, Any]
    acted: bool = True  # False in observe mode: nothing was done
    id: str = field(default_factory=lambda: "anm_" + secrets.token_hex(8))

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "ts": self.ts,
            "detector": self.detector,
            "key_id": self.key_id,
            "team_id": self.team_id,
            "subject": self.subject,
            "score": round(self.score, 2),
            "action": self.action,
            "acted": self.acted,
            "evidence": self.evidence,
        }


Emit = Callable[[str, KeyState | None, str | None, str, float, dict[str, Any]], None]
"""``emit(detector, state, key_id, subject, score, evidence)``: the analyser's event factory."""


def rate_detectors(
    settings: AnomalySettings, key_id: str, state: KeyState, now: float, learned: bool, emit: Emit
) -> None:
    """Run surge, slow exfiltration and denial burst for one key, then learn its peaks."""
    d = settings.detectors
    surge, slow, deny = d["surge"], d["slow_exfiltration"], d["denial_burst"]
    requests, tokens, denials = state.window(now, surge.window)
    how, hod = hour_of_week(now), hour_of_day(now)
    fired = False
    slow_mark = f"slow_exfiltration:{key_id}"
    if learned:
        base = max(state.how_peak[how], state.hod_peak[hod], state.peak5 / 4, 1.0)
        if requests >= surge.threshold and requests > surge.factor * base:
            fired = True
            emit(
                "surge",
                state,
                key_id,
                key_id,
                requests / base,
                {
                    "what": "requests",
                    "observed": requests,
                    "baseline": round(base, 1),
                    "window_s": surge.window,
                },
            )
        tbase = max(state.tpeak5 / 4, 100.0)
        if tokens >= surge.threshold * 100 and tokens > surge.factor * tbase and not fired:
            fired = True
            emit(
                "surge",
                state,
                key_id,
                key_id,
                tokens / tbase,
                {"what": "tokens", "observed": tokens, "baseline": round(tbase), "window_s": surge.window},
            )
        if fired:  # a surge's requests stay in the long window: it was reported already
            state.cooldown[slow_mark] = max(state.cooldown.get(slow_mark, 0.0), now + slow.window)
        dreq, dtok, expected, texpected = state.hours_window(now, slow.window)
        floor = max(expected, slow.threshold / slow.factor / 2)
        if dreq >= slow.threshold and dreq >= slow.factor * floor and dreq >= 1.5 * state.peak_long[0]:
            fired = True
            emit(
                "slow_exfiltration",
                state,
                key_id,
                key_id,
                dreq / floor,
                {
                    "what": "requests",
                    "observed": dreq,
                    "expected": round(expected, 1),
                    "highest_before": state.peak_long[0],
                    "window_s": slow.window,
                },
            )
        tfloor = max(texpected, slow.threshold * 100 / slow.factor / 2)
        if (
            not fired
            and dtok >= slow.threshold * 100
            and dtok >= slow.factor * tfloor
            and dtok >= 1.5 * state.peak_long[1]
        ):
            fired = True
            emit(
                "slow_exfiltration",
                state,
                key_id,
                key_id,
                dtok / tfloor,
                {
                    "what": "tokens",
                    "observed": dtok,
                    "expected": round(texpected),
                    "highest_before": state.peak_long[1],
                    "window_s": slow.window,
                },
            )
        dfloor = max(state.deny_peak5, 1.0)
        mostly_refused = 2 * denials >= requests and denials > 2 * dfloor
        if denials >= deny.threshold and (denials > deny.factor * dfloor or mostly_refused):
            fired = True
            emit(
                "denial_burst",
                state,
                key_id,
                key_id,
                denials / dfloor,
                {
                    "observed": denials,
                    "requests": requests,
                    "baseline": state.deny_peak5,
                    "window_s": deny.window,
                },
            )
    if fired:
        state.block_flagged = True
    learn_peaks(state, now, learned)


def learn_peaks(state: KeyState, now: float, learned: bool) -> None:
    """Fold the last finished five-minute block into the peaks (not a block with an event).

    Peaks learn from whole blocks, never from the sliding window, so how often the analyser runs
    does not change what it learns; after the learning period a peak grows slowly (``grow``).
    """
    block = int(now // 300)
    if state.block < 0:
        state.block = block
        return
    if block == state.block:
        return
    done, state.block = state.block, block
    flagged, state.block_flagged = state.block_flagged, False
    if flagged or state.quarantined:
        return
    start = done * 5
    r = t = d = 0
    for minute, (a, b, c) in state.minutes.items():
        if start <= minute < start + 5:
            r += a
            t += b
            d += c
    ts = done * 300.0
    how, hod = hour_of_week(ts), hour_of_day(ts)
    state.peak5 = grow(state.peak5, r, learned)
    state.tpeak5 = grow(state.tpeak5, t, learned)
    state.how_peak[how] = grow(state.how_peak[how], r, learned)
    state.hod_peak[hod] = grow(state.hod_peak[hod], r, learned)
    state.deny_peak5 = grow(state.deny_peak5, d, learned)
