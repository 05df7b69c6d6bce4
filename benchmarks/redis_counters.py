"""Redis-backed counters against in-process ones: keygate CPU and Redis round trips per request.

A quick measurement, not the scaled-out benchmark: the real Gateway driven in memory as in
hotpath.py (no sockets, canned upstream answer), one request at a time, every request under a
key with a rate limit, a token rate, a concurrency cap and a token budget (all far from full).
Redis is a private ``redis-server`` on a free port, started and stopped here; its INFO
commandstats and CPU are read before and after.

    python benchmarks/redis_counters.py [--requests 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from hotpath import Proto, Scope, Upstream

LIMITS = {
    "defaults": {
        "rpm": 100_000_000,
        "tpm": 1_000_000_000,
        "max_concurrent": 1000,
        "budget_tokens": {"amount": 1e15, "period": "lifetime"},
    }
}


async def measure(n: int, extra: dict[str, Any], concurrency: int = 1) -> tuple[float, float, Any]:
    from keygate import keys as keyfmt
    from keygate.config import ensure_pepper, load_settings
    from keygate.counters.redis import RedisCounters
    from keygate.server import build
    from keygate.types import AuditRecord, KeyRecord

    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "keygate.yaml"
        base = {
            "database_url": "sqlite:///keygate.db",
            "access_log": str(Path(tmp) / "access.log"),
            "upstreams": {"openai": {"base_url": "http://127.0.0.1:9/v1", "api_key": "${OPENAI_API_KEY}"}},
            "limits": LIMITS,
        }
        cfg.write_text(yaml.safe_dump({**base, **extra}))
        settings = ensure_pepper(load_settings(cfg, {**os.environ, "OPENAI_API_KEY": "sk-bench"}))
        parts = build(settings)
        secret = keyfmt.generate()
        parts.store.insert_key(
            KeyRecord(keyfmt.new_id(), "bench", keyfmt.hash_key(settings.pepper, secret), "h", time.time()),
            AuditRecord(time.time(), "bench", "local", "keys.create", "bench"),
        )
        parts.gateway.forwarder._http = Upstream()  # type: ignore[assignment]
        counters = parts.counters if isinstance(parts.counters, RedisCounters) else None
        if counters is not None:
            await counters.start()
        await parts.recorder.start()
        await parts.gateway.chain.start()
        scope, proto = Scope(secret), Proto()
        app = parts.gateway.__rsgi__
        for _ in range(1000):
            await app(scope, proto)
        assert proto.status == 200, proto.status
        if counters is not None:
            await counters.drain()
        trips0 = counters.round_trips if counters is not None else 0
        writes0 = counters._resp.writes if counters is not None else 0
        await parts.recorder.flush()
        cpu0, t0 = time.process_time(), os.times()
        if concurrency == 1:
            for i in range(n):
                await app(scope, proto)
                if i % 200 == 0:
                    await asyncio.sleep(0)
        else:  # batches of requests at once (their Redis commands share writes and reads)
            for _ in range(n // concurrency):
                await asyncio.gather(*(app(scope, Proto()) for _ in range(concurrency)))
        if counters is not None:
            await counters.drain()
        await parts.recorder.flush()
        cpu, t1 = time.process_time() - cpu0, os.times()
        system = t1.system - t0.system
        trips = (counters.round_trips - trips0) / n if counters is not None else 0.0
        writes = (counters._resp.writes - writes0) / n if counters is not None else 0.0
        await parts.gateway.chain.stop()
        if counters is not None:
            await counters.close()
        await parts.recorder.close()
        parts.store.close()
        return cpu / n * 1e6, system / n * 1e6, (trips, writes)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=1, help="requests in flight at once")
    args = ap.parse_args()
    n, conc = args.requests, args.concurrency
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = shutil.which("redis-server") or "redis-server"
    proc = subprocess.Popen(
        [server, "--port", str(port), "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL
    )
    try:
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.02)
        memory_us, memory_sys, _ = asyncio.run(measure(n, {}, conc))
        client.config_resetstat()
        cpu_before = client.info("cpu")
        redis_us, redis_sys, trips = asyncio.run(
            measure(n, {"redis_url": f"redis://127.0.0.1:{port}/0"}, conc)
        )
        cpu_after = client.info("cpu")
        stats = client.info("commandstats")
        evalsha = stats.get("cmdstat_evalsha", {}).get("calls", 0)
        redis_cpu = sum(cpu_after[k] - cpu_before[k] for k in ("used_cpu_sys", "used_cpu_user"))
        total = (n + 1000) * 1  # requests sent while the stats counted (warm-up included)
        print(f"{n} requests, {conc} at a time, each under rpm + tpm + max_concurrent + token budget:")
        print(f"  in-process counters: {memory_us:.1f} us keygate CPU per request ({memory_sys:.1f} kernel)")
        print(
            f"  Redis counters:      {redis_us:.1f} us keygate CPU per request (+{redis_us - memory_us:.1f}; "
            f"{redis_sys:.1f} in the kernel: socket sends and receives)"
        )
        print(f"  Redis calls per request (admits + release pipelines): {trips[0]:.2f}")
        print(f"  Redis round trips per request (writes on the connection): {trips[1]:.2f}")
        print(f"  EVALSHA per request (warm-up included): {evalsha / total:.2f}")
        print(f"  Redis CPU per request (warm-up included): {redis_cpu / total * 1e6:.1f} us")
        print(f"  commands: { {k: v['calls'] for k, v in stats.items()} }")
    finally:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    main()
