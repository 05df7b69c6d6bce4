"""The library alternative, measured: river's online Half-Space Trees on the rate attacks.

    pip install river   # into a throwaway virtualenv: river is NOT a keygate dependency
    python benchmarks/anomaly_river.py [--seed 1] [--keys 24] [--days 14]

Per key, one ``river.anomaly.HalfSpaceTrees`` (behind a ``MinMaxScaler``) is fed the key's
five-minute blocks as features (requests, tokens, policy denials, distinct networks), learning
only during the learning period and then from blocks it does not flag, exactly like keygate's
peaks. Its alarm threshold is set, *with the labels*, to the lowest score that keeps false
alarms on normal traffic at most 1 per 1,000 key-days (a generous tuning keygate's detectors
do not get). Then: which rate attacks (surge, token surge, slow exfiltration, denial burst) it
flags, and after how many simulated minutes, next to keygate's detectors on the same trace.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from anomalies import replay
from anomaly_traffic import DAY, generate
from river import anomaly, compose, preprocessing

RATE_ATTACKS = ("surge", "token_surge", "slow_exfiltration", "denial_burst")
BLOCK = 300.0


def blocks(trace: Any) -> dict[str, list[tuple[float, dict[str, float], int]]]:
    """Per key, its five-minute blocks in time order: (block start, features, attack label)."""
    acc: dict[tuple[str, int], list[Any]] = {}
    for row, label in trace.rows:
        ts, key = row[0], row[1]
        if key is None or row[11] != 0:
            continue
        b = acc.setdefault((key, int(ts // BLOCK)), [0, 0, 0, set(), -1])
        b[0] += 1
        b[1] += row[9]
        b[2] += 1 if row[7] >= 400 and row[8] else 0
        b[3].add(row[3].rsplit(".", 1)[0])
        if label >= 0:
            b[4] = label
    out: dict[str, list[tuple[float, dict[str, float], int]]] = defaultdict(list)
    for (key, block), (r, t, d, nets, label) in sorted(acc.items(), key=lambda kv: kv[0][1]):
        feats = {"requests": float(r), "tokens": float(t), "denials": float(d), "networks": float(len(nets))}
        out[key].append((block * BLOCK, feats, label))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keys", type=int, default=24)
    ap.add_argument("--days", type=float, default=14)
    args = ap.parse_args()
    trace = generate(args.seed, args.keys, args.days)
    start = trace.rows[0][0][0]
    learn_until = start + 7 * DAY
    started = time.process_time()
    scored: list[tuple[float, str, float, int]] = []  # (score, key, block start, label)
    for key, items in blocks(trace).items():
        trees = anomaly.HalfSpaceTrees(n_trees=15, height=8, window_size=250, seed=1)
        model = compose.Pipeline(preprocessing.MinMaxScaler(), trees)
        for ts, feats, label in items:
            if ts < learn_until:
                model.learn_one(feats)
                continue
            score = model.score_one(feats)
            scored.append((score, key, ts, label))
            if score < 0.9:  # learn from what it does not flag
                model.learn_one(feats)
    cpu = time.process_time() - started
    key_days = trace.keys * trace.days
    normal = sorted((s for s, _, _, label in scored if label < 0), reverse=True)
    allowed = int(key_days / 1000)  # false alarms allowed at 1 per 1,000 key-days
    threshold = normal[allowed] if len(normal) > allowed else 1.0
    print(
        f"river HalfSpaceTrees: {len(scored):,} blocks scored after learning, {cpu:.1f} s CPU; "
        f"threshold {threshold:.3f} (the {allowed + 1}th highest normal score, tuned with the labels)"
    )
    ours = {a["attack"]: a for a in replay(trace)["attacks"]}
    thresholds = [threshold, 0.95, 0.8, 0.6]
    header = "".join(f"{'river >' + format(t, '.3f'):>16}" for t in thresholds)
    print(f"{'attack':20}{header}{'keygate':>12}")
    for index, attack in enumerate(trace.attacks):
        if attack.kind not in RATE_ATTACKS:
            continue
        cells = []
        for t in thresholds:
            hits = sorted(ts for s, k, ts, label in scored if label == index and s > t)
            cells.append(f"{(hits[0] + BLOCK - attack.start) / 60:.1f} min" if hits else "missed")
        mine = ours[attack.kind]["expected"]
        keygate = f"{mine['minutes']} min" if mine else "missed"
        print(f"{attack.kind:20}" + "".join(f"{c:>16}" for c in cells) + f"{keygate:>12}")
    false = [sum(1 for s in normal if s > t) / key_days * 1000 for t in thresholds]
    print(f"{'false alarms/1000 kd':20}" + "".join(f"{f:>16.1f}" for f in false) + f"{0.0:>12.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
