"""What the prompt scan adds to a request: µs per request on a realistic 2 KB chat body.

    python benchmarks/prompt_scan.py               # the guard: clean body, one secret, masking, PII on
    python benchmarks/prompt_scan.py --libraries   # also other detectors, where installed

Each figure is the median over rounds of the mean CPU time of the guard's request phase (the work
it adds to a request, less the cost of making the request context) on the same body, in this
process; the budget is 30 µs for a 2 KB chat request
with the default policy (secrets: block, pii: off). ``--libraries`` times, on the same text, the
anchor search one ``bytes`` find at a time (the fallback where Hyperscan has no wheel), Yelp's
detect-secrets (``scan_line`` with its default plugins), RE2 and Hyperscan, each only if installed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from keygate import secret_scan
from keygate.guards.prompt_scan import PromptScan
from keygate.testing import context, key_record

SYSTEM = (
    "You are a senior Python reviewer for a payments team. Answer in short paragraphs, point at the "
    "exact line, and prefer the standard library. When a change is risky, say so and suggest a test "
    "that would catch the regression."
)
USER = (
    "Here is the retry helper from our task-runner. It backs off exponentially but our risk-based "
    "alerting fires too often during deploys:\n\n```python\nimport random, time\n\n"
    "def retry(fn, attempts=5, base=0.2, cap=5.0):\n    for i in range(attempts):\n        try:\n"
    "            return fn()\n        except TimeoutError as exc:  # the upstream sometimes hangs\n"
    "            delay = min(cap, base * 2 ** i) * random.uniform(0.5, 1.5)\n"
    "            log.warning('retrying %s in %.2fs (attempt %d/%d)', fn.__name__, delay, i + 1, attempts)\n"
    "            time.sleep(delay)\n    raise RuntimeError('gave up')\n```\n"
    "Order 4471 failed at 10:42 on 2026-03-14 with status 503, and ticket DESK-1203 has the logs. "
    "Our p99 went from 180 ms to 2.4 s. Why does the jitter not spread the retries out enough?"
)
ASSISTANT = (
    "The jitter is multiplicative around the exponential delay, so retries of requests that failed "
    "together stay clustered; with five attempts the last gap is already at the cap. Use full jitter "
    "(uniform between zero and the capped delay) and keep a retry budget per process so that a "
    "deploy cannot multiply the load on the upstream."
)
FOLLOW_UP = (
    "Thanks. Could you rewrite it with full jitter, a per-process budget of 10% of requests, and type "
    "hints? Also explain how to test it without sleeping, e.g. by injecting the clock and the random "
    "source. Keep it compatible with Python 3.11. Our CI runs the suite with `pytest -q -x` on two "
    "cores, and flaky timing tests have cost us a day each this quarter, so nothing may depend on wall "
    "time. The service runs behind our gateway in three regions."
)
SECRET_LINE = "\nThe job's environment has AWS_ACCESS_KEY_ID=AKIAZ7QX3KJ2VN4RTB6M set, if that matters."


def chat(extra: str = "") -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "temperature": 0.2,
        "max_tokens": 800,
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": USER},
            {"role": "assistant", "content": ASSISTANT},
            {"role": "user", "content": FOLLOW_UP + extra},
        ],
    }


def per_call(fn: Callable[[], object], rounds: int, number: int) -> float:
    """Median over ``rounds`` of the mean µs per call of ``fn``, ``number`` calls a round, in CPU
    time of this process (a busy machine takes the CPU away now and then; that is not the scan's)."""
    means = []
    for _ in range(rounds):
        start = time.process_time_ns()
        for _ in range(number):
            fn()
        means.append((time.process_time_ns() - start) / number / 1000)
    return statistics.median(means)


def guard_case(
    guard: PromptScan, body: dict[str, Any], policy: dict[str, Any] | None = None
) -> Callable[[], object]:
    key = key_record("key_bench", policy or {})
    raw = orjson.dumps(body)

    def run() -> object:
        ctx = context(json=body, key=key)  # what the body guard leaves (made afresh: mask changes it)
        ctx.body = raw
        return guard.request(ctx)

    return run


def baseline(body: dict[str, Any]) -> Callable[[], object]:
    key = key_record("key_bench")

    def run() -> object:
        return context(json=body, key=key)

    return run


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--number", type=int, default=2000)
    ap.add_argument("--libraries", action="store_true", help="also time other detectors, where installed")
    args = ap.parse_args(argv)

    clean, dirty = chat(), chat(SECRET_LINE)
    size = len(orjson.dumps(clean))
    guard = PromptScan("block", "off")
    print(
        f"prompt scan, chat body of {size} bytes ({len(orjson.dumps(dirty))} with the secret); "
        f"anchor search: {'Hyperscan' if guard._anchors.library else 'one bytes.find per anchor'}"
    )
    base = per_call(baseline(clean), args.rounds, args.number)
    cases = [
        ("no secret, default policy (secrets: block)", guard, clean, None),
        ("one secret, refused (block)", guard, dirty, None),
        ("one secret, masked (mask)", PromptScan("mask", "off"), dirty, None),
        ("one secret, recorded (log)", PromptScan("log", "off"), dirty, None),
        ("no secret, personal data on (pii: block)", PromptScan("block", "block"), clean, None),
        ("policy off (secrets: off, pii: off)", PromptScan("off", "off"), clean, None),
    ]
    import logging

    logging.getLogger("keygate.alert").disabled = True  # findings are logged; time the scan, not stderr
    print(f"{'case':<46} {'µs/request added':>17}")
    for label, g, body, policy in cases:
        took = per_call(guard_case(g, body, policy), args.rounds, args.number) - base
        print(f"{label:<46} {took:>17.1f}")
    if args.libraries:
        libraries(clean, dirty, args.rounds)


def libraries(clean: dict[str, Any], dirty: dict[str, Any], rounds: int) -> None:
    raw = orjson.dumps(clean)
    text = raw.decode()
    print(f"\n{'detector on the same clean body':<46} {'µs/request':>17}")
    plain = secret_scan.AnchorSearch(use_library=False)
    print(f"{'anchors one bytes.find at a time':<46} {per_call(lambda: plain(raw), rounds, 500):>17.1f}")
    try:
        import hyperscan  # noqa: F401

        fast = secret_scan.AnchorSearch()
        print(f"{'anchors in one Hyperscan pass':<46} {per_call(lambda: fast(raw), rounds, 2000):>17.1f}")
    except ImportError:
        print("hyperscan: not installed")
    try:
        import re2

        rx = re2.compile("|".join(re2.escape(a.decode()) for a in secret_scan.ANCHORS))
        print(
            f"{'anchors as one RE2 expression':<46} {per_call(lambda: rx.search(raw), rounds, 2000):>17.1f}"
        )
    except ImportError:
        print("google-re2: not installed")
    try:
        from detect_secrets.core.scan import scan_line
        from detect_secrets.settings import default_settings

        with default_settings():
            lines = text.splitlines()
            took = per_call(lambda: [s for line in lines for s in scan_line(line)], 3, 5)
            print(f"{'detect-secrets, default plugins':<46} {took:>17.1f}")
    except ImportError:
        print("detect-secrets: not installed")


if __name__ == "__main__":
    main()
