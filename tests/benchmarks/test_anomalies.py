"""The anomaly evaluation holds beyond its own trace: other seeds, key counts and attack strengths.

Each run replays a smaller labelled trace (benchmarks/anomaly_traffic.py) through the real
analyser and asserts the issue's targets: every attack reported by a detector meant for it, the
fast ones (leaked key, surges, stuffing, honeytoken) within five simulated minutes, at most one
false alert per 1,000 key-days, no false quarantine.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from anomalies import evaluate


def check(result: dict[str, Any]) -> None:
    missed = [a["attack"] for a in result["attacks"] if a["expected"] is None and a["required"]]
    assert not missed, f"not detected: {missed}"
    slow = [a["attack"] for a in result["attacks"] if a["fast_target"] and a["expected"]["minutes"] > 5]
    assert not slow, f"not within five minutes: {slow}"
    assert result["false_quarantines"] == 0, result["false_events"]
    assert result["false_alerts_per_1000_key_days"] <= 1.0, result["false_events"]


LEARN = 4 * 86400.0  # a four-day learning period keeps the traces short (attacks from day 4.5)


@pytest.mark.parametrize(
    ("seed", "keys", "strength"),
    [(11, 12, 0.7), (12, 12, 1.5), (13, 16, 1.0)],
)
def test_targets_hold_for_other_traces(seed: int, keys: int, strength: float) -> None:
    check(evaluate(seed, keys, 6, strength, learning_period=LEARN))


def test_the_check_fails_a_detector_that_sees_nothing() -> None:
    # The same evaluation with the detectors made blind (thresholds nothing reaches) fails.
    from keygate.anomalyconf import Detector, default_detectors

    blind = {name: Detector(d.action, 1e9, d.window, d.factor) for name, d in default_detectors().items()}
    with pytest.raises(AssertionError, match="not detected"):
        check(evaluate(11, 12, 6, 1.0, learning_period=LEARN, detectors=blind))
