"""What the metrics cost per request, measured in isolation (a complement to hotpath.py, whose
whole-process figure moves by more than this between runs on a shared machine).

1. On the event loop: what the request path does for the metrics and nothing else: the app's
   arrival count, the four perf_counter readings of the forwarder and the relay, and the record
   guard's fact for the metrics (a tuple, appended through Metrics.observe).
2. In the metrics writer thread: turning one fact into counts and histogram buckets
   (Metrics._write over batches of facts like a chat completion's).

    python benchmarks/metrics.py [--requests 200000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from time import perf_counter

import yaml


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=200_000)
    n = ap.parse_args().requests
    from keygate.config import load_settings
    from keygate.metrics import Metrics
    from keygate.types import UsageRow

    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "keygate.yaml"
        cfg.write_text(yaml.safe_dump({"database_url": "sqlite:///keygate.db"}))
        settings = load_settings(cfg, {**os.environ, "OPENAI_API_KEY": "sk-bench"})
    metrics = Metrics(settings)
    row = UsageRow(
        time.time(), "kg-1", "key_1", "chat.completions", "POST", "/v1/chat/completions", "gpt-4o-mini",
        200, 9, 12, 0, 1.5, "127.0.0.1", "openai", False,
    )  # fmt: skip

    class App:
        arrivals = 0

    class Ctx:
        upstream_started = upstream_ended = first_chunk = 0.0
        started = 0.0

    app, ctx, observe = App(), Ctx(), metrics.observe
    # 1. the request path's share, and the same loop without it
    t0 = time.process_time()
    for _ in range(n):
        app.arrivals += 1
        ctx.upstream_started = perf_counter()
        ctx.upstream_ended = perf_counter()
        end = perf_counter()
        observe((row, ctx.started, ctx.upstream_started, ctx.upstream_ended, ctx.first_chunk, end))
    with_metrics = time.process_time() - t0
    t0 = time.process_time()
    for _ in range(n):
        end = perf_counter()
    bare = time.process_time() - t0
    loop_us = (with_metrics - bare) / n * 1e6
    # 2. the writer thread's share
    facts = metrics._pending
    metrics._pending = []
    t0 = time.process_time()
    for i in range(0, len(facts), 500):  # batches, as the writer thread gets them
        metrics._write(facts[i : i + 500])
    thread_us = (time.process_time() - t0) / n * 1e6
    print(f"request path (event loop): {loop_us:.2f} µs per request")
    print(f"metrics writer thread:     {thread_us:.2f} µs per request")
    print(f"in all:                    {loop_us + thread_us:.2f} µs per request")


if __name__ == "__main__":
    main()
