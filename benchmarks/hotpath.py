"""Keygate's own Python cost per request, without sockets: a deterministic complement to run.py.

Drives the real Gateway (real chain, key cache, SQLite store and recorder) with an in-memory RSGI
request and a canned in-memory upstream, and reports CPU microseconds per request for the whole
process (event loop plus the recorder thread). Network, HTTP parsing and the upstream client are
not included: run.py measures those end to end. Useful to see what a guard costs:

    python benchmarks/hotpath.py [--requests 50000] [--config-extra FILE] [--concurrency N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

BODY = (
    b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello in one short sentence please"}]}'
)
ANSWER = (
    b'{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":[{"index":0,'
    b'"message":{"role":"assistant","content":"Hello!"},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21}}'
)
UPSTREAM_HEADERS = {
    "content-type": "application/json",
    "x-request-id": "req_1",
    "openai-organization": "org-x",
    "x-ratelimit-remaining-requests": "99",
    "set-cookie": "a=b",
}


class Headers:
    def __init__(self, items: list[tuple[str, str]]) -> None:
        self._items = items

    def items(self) -> list[tuple[str, str]]:
        return self._items


class Scope:
    proto = "http"
    method = "POST"
    path = "/v1/chat/completions"
    query_string = ""
    client = "127.0.0.1:40000"

    def __init__(self, key: str) -> None:
        self.headers = Headers(
            [
                ("host", "127.0.0.1:8080"),
                ("authorization", f"Bearer {key}"),
                ("content-type", "application/json"),
                ("content-length", str(len(BODY))),
                ("user-agent", "OpenAI/Python 1.0"),
                ("accept", "application/json"),
            ]
        )


class Proto:
    status = 0

    async def __call__(self) -> bytes:
        return BODY

    def response_bytes(self, status: int, headers: Any, body: bytes) -> None:
        self.status = status


class Response:
    status = 200
    headers = list(UPSTREAM_HEADERS.items())
    body = ANSWER

    def header(self, name: str) -> str | None:
        return UPSTREAM_HEADERS.get(name)


class Origin:
    path = "/v1"


class Upstream:
    """Stands in for http1.Client: every request gets the canned answer at once."""

    def origin(self, *args: Any) -> Origin:
        return Origin()

    async def request(self, *args: Any) -> Response:
        return Response()

    def close(self) -> None:
        pass


def thread_cpu() -> dict[str, float]:
    """CPU seconds of each thread of this process so far, by thread name."""
    import threading

    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        name = names.get(int(task.name), f"thread {task.name}")
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


async def run(n: int, extra: dict[str, Any], concurrency: int = 1) -> None:
    from keygate import keys as keyfmt
    from keygate.config import ensure_pepper, load_settings
    from keygate.server import build
    from keygate.types import AuditRecord, KeyRecord

    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "keygate.yaml"
        base = {
            "database_url": "sqlite:///keygate.db",
            "access_log": str(Path(tmp) / "access.log"),
            "upstreams": {"openai": {"base_url": "http://127.0.0.1:9/v1", "api_key": "${OPENAI_API_KEY}"}},
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
        await parts.recorder.start()
        metrics = getattr(parts, "metrics", None)  # (absent before the metrics existed)
        if metrics is not None:
            await metrics.start()
        await parts.gateway.chain.start()
        scope, proto = Scope(secret), Proto()
        app = parts.gateway.__rsgi__
        for _ in range(2000):  # warm up
            await app(scope, proto)
        await parts.recorder.flush()
        if metrics is not None:
            await metrics.flush()
        assert proto.status == 200, proto.status

        async def client(count: int) -> None:
            for i in range(count):
                await app(scope, proto)
                if i % 2000 == 0:
                    await asyncio.sleep(0)  # let the recorder run as it would between requests

        cpu0, wall0 = time.process_time(), time.perf_counter()
        threads0 = thread_cpu()
        await asyncio.gather(*(client(n // concurrency) for _ in range(concurrency)))
        n = n // concurrency * concurrency
        await parts.recorder.flush()
        if metrics is not None:
            await metrics.flush()  # every request counted (its writer thread's CPU included)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        threads = thread_cpu()  # (before the writer threads stop)
        await parts.gateway.chain.stop()
        await parts.recorder.close()
        if metrics is not None:
            await metrics.close()
        parts.store.close()
    per_cpu, per_wall = cpu / n * 1e6, wall / n * 1e6
    print(f"{n} requests: {per_cpu:.1f} µs CPU per request ({per_wall:.1f} µs wall), status {proto.status}")
    spent = {name: cpu - threads0.get(name, 0.0) for name, cpu in threads.items()}
    print(
        "  by thread: " + ", ".join(f"{name} {t / n * 1e6:.1f}" for name, t in spent.items() if t / n > 5e-8)
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=50_000)
    ap.add_argument("--config-extra", type=Path, help="YAML merged into the generated config")
    ap.add_argument(
        "--concurrency", type=int, default=1, help="requests in flight at once (for counters on a server)"
    )
    args = ap.parse_args()
    extra = yaml.safe_load(args.config_extra.read_text()) if args.config_extra else {}
    import uvloop

    uvloop.run(run(args.requests, extra or {}, args.concurrency))


if __name__ == "__main__":
    main()
