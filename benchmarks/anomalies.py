"""Replay a labelled trace through keygate's real anomaly detectors, with simulated time.

    python benchmarks/anomalies.py [--seed 1] [--keys 60] [--days 14] [--strength 1] [--json]

The trace comes from ``benchmarks/anomaly_traffic.py`` (seeded). The analyser is
``keygate.analytics.engine.Analyser`` with the default ``anomalies:`` settings (the learning
period and everything else as a gateway runs them), given a pass every 30 simulated seconds with
the simulated clock, exactly as the gateway's watch gives it one every ``interval`` seconds with
the wall clock. Prints per attack: detected or not, the first detector and whether an expected
one reported it, the delay (attack requests seen, simulated minutes); and the false events per
1,000 key-days of normal traffic (alerts: action alert or stronger; quarantines).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from anomaly_traffic import DAY, Attack, Trace, generate

from keygate.analytics.detectors import Event
from keygate.analytics.engine import Analyser
from keygate.anomalyconf import AnomalySettings

TICK = 30.0  # simulated seconds between analysis passes
ALERTING = frozenset({"alert", "throttle", "block_network", "quarantine"})


def _matches(event: Event, attack: Attack) -> bool:
    if not attack.start - 1 <= event.ts <= attack.end + attack.grace:
        return False
    if attack.key_id is None and attack.team is not None:  # an attack on a whole team
        return event.team_id == attack.team
    if attack.key_id is not None:
        if event.key_id is None and event.detector == "team_surge":
            return event.team_id == attack.team
        return event.key_id == attack.key_id
    if event.subject == attack.subject:
        return True
    ev = event.evidence
    return ev.get("client_ip") == attack.subject or attack.subject in ev.get("addresses", [])


def replay(trace: Trace, settings: AnomalySettings | None = None) -> dict[str, Any]:
    settings = settings or AnomalySettings()
    analyser = Analyser(settings)
    events: list[Event] = []
    batch: list[Any] = []
    rows = trace.rows
    tick = rows[0][0][0] + TICK if rows else 0.0
    started = time.process_time()
    for row, _ in rows:
        while row[0] >= tick:
            events.extend(analyser.process(batch, tick))
            batch = []
            tick += TICK
        batch.append(row)
    events.extend(analyser.process(batch, tick))
    cpu = time.process_time() - started

    results = []
    matched: set[int] = set()
    for index, attack in enumerate(trace.attacks):
        mine = [e for e in events if _matches(e, attack)]
        matched.update(id(e) for e in mine)
        first = min(mine, key=lambda e: e.ts) if mine else None
        expected = [e for e in mine if e.detector in attack.expected]
        first_expected = min(expected, key=lambda e: e.ts) if expected else None
        seen = [r[0][0] for r in rows if r[1] == index]

        def delay(
            e: Event | None, seen: list[float] = seen, attack: Attack = attack
        ) -> dict[str, Any] | None:
            if e is None:
                return None
            return {
                "detector": e.detector,
                "action": e.action,
                "requests": sum(1 for t in seen if t <= e.ts),
                "minutes": round((e.ts - attack.start) / 60, 1),
            }

        results.append(
            {
                "attack": attack.kind,
                "subject": attack.subject,
                "requests": len(seen),
                "detected": first is not None,
                "first": delay(first),
                "expected": delay(first_expected),
                "fast_target": attack.fast,
                "required": attack.required,
                "detectors": sorted({e.detector for e in mine}),
            }
        )
    false = [e for e in events if id(e) not in matched]
    key_days = trace.keys * trace.days
    learned_days = trace.keys * max(0.0, trace.days - settings.learning_period / DAY)
    false_alerts = [e for e in false if e.action in ALERTING]
    false_quarantines = [e for e in false if e.action == "quarantine"]
    return {
        "keys": trace.keys,
        "days": trace.days,
        "requests": len(rows),
        "analysis_cpu_s": round(cpu, 2),
        "us_per_request": round(cpu / max(1, len(rows)) * 1e6, 2),
        "attacks": results,
        "false_events": [e.view() for e in false],
        "false_alerts": len(false_alerts),
        "false_quarantines": len(false_quarantines),
        "false_alerts_per_1000_key_days": round(len(false_alerts) / key_days * 1000, 2),
        "false_quarantines_per_1000_key_days": round(len(false_quarantines) / key_days * 1000, 2),
        "false_alerts_per_1000_learned_key_days": round(len(false_alerts) / max(1.0, learned_days) * 1000, 2),
        "all_detected": all(r["detected"] for r in results if r["required"]),
        "all_expected": all(r["expected"] is not None for r in results if r["required"]),
        "fast_within_5_min": all(
            r["expected"] is not None and r["expected"]["minutes"] <= 5 for r in results if r["fast_target"]
        ),
    }


def evaluate(
    seed: int = 1, keys: int = 60, days: float = 14, strength: float = 1.0, **overrides: Any
) -> dict[str, Any]:
    """Generate and replay; ``overrides`` replace default ``anomalies:`` settings. A shorter
    ``learning_period`` moves the attacks earlier too (half a day after it ends)."""
    settings = dataclasses.replace(AnomalySettings(), **overrides) if overrides else AnomalySettings()
    after = settings.learning_period / DAY + 0.5
    return replay(generate(seed, keys, days, strength, attack_after=after), settings)


def _print(result: dict[str, Any]) -> None:
    print(
        f"{result['keys']} keys, {result['days']:g} days, {result['requests']:,} requests; analysis "
        f"{result['analysis_cpu_s']} s CPU ({result['us_per_request']} µs per request)\n"
    )
    print(
        f"{'attack':27} {'detected':8} {'first detector':20} {'reqs':>5} {'min':>6}   "
        f"{'expected detector':20} {'reqs':>5} {'min':>6}"
    )
    for r in result["attacks"]:
        f, e = r["first"] or {}, r["expected"] or {}
        print(
            f"{r['attack']:27} {'yes' if r['detected'] else 'NO':8} {f.get('detector', '-'):20} "
            f"{f.get('requests', '-'):>5} {f.get('minutes', '-'):>6}   {e.get('detector', '-'):20} "
            f"{e.get('requests', '-'):>5} {e.get('minutes', '-'):>6}"
            + ("  (<= 5 min target)" if r["fast_target"] else "")
            + ("" if r["required"] else "  (extra class, not a target)")
        )
    print(
        f"\nfalse alerts: {result['false_alerts']} "
        f"({result['false_alerts_per_1000_key_days']} per 1,000 key-days; "
        f"{result['false_alerts_per_1000_learned_key_days']} per 1,000 key-days after learning); "
        f"false quarantines: {result['false_quarantines']} "
        f"({result['false_quarantines_per_1000_key_days']} per 1,000 key-days)"
    )
    for e in result["false_events"][:20]:
        print(f"  false {e['action']}: {e['detector']} {e['key_id'] or e['subject']} {e['evidence']}")
    print(
        f"every attack of the issue's classes detected: {result['all_detected']}; "
        f"by an expected detector: {result['all_expected']}; "
        f"fast ones within 5 minutes: {result['fast_within_5_min']}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keys", type=int, default=60)
    ap.add_argument("--days", type=float, default=14)
    ap.add_argument("--strength", type=float, default=1.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    started = time.time()
    result = evaluate(args.seed, args.keys, args.days, args.strength)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        _print(result)
        print(f"({time.time() - started:.1f} s wall in all)")
    ok = result["all_detected"] and result["fast_within_5_min"] and result["false_quarantines"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
