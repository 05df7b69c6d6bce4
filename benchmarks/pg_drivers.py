"""PostgreSQL driver comparison behind docs/deployment.md ("The driver"): psycopg 3 as
``PostgresStore`` uses it against asyncpg, on a 200-row usage batch and a 1,000-key list.

    python benchmarks/pg_drivers.py [--runs 200] [--admin-url postgresql://postgres@127.0.0.1/postgres]

asyncpg is not a keygate dependency: install it somewhere temporary to compare
(``pip install --target /tmp/apg asyncpg`` and ``PYTHONPATH=/tmp/apg``); without it only the
psycopg figures are printed. A database of its own is created and dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import psycopg

from keygate.store.postgres import PostgresStore
from keygate.store.usage_sql import USAGE_COLUMNS, UsageMixin
from keygate.types import AuditRecord, KeyRecord, UsageRow

AUDIT = AuditRecord(1.0, "bench", "local", "bench", "t", "{}")
ROWS = [
    UsageRow(
        float(i),
        f"req-{i}",
        f"k{i % 50}",
        "chat.completions",
        "POST",
        "/v1/chat/completions",
        "gpt-4o",
        200,
        10,
        20,
        0,
        1.5,
        "127.0.0.1",
        "openai",
        False,
    )
    for i in range(200)
]
KEY_SQL = (
    "SELECT id, name, key_hash, hint, created_at, status, team_id, upstream, last_used_at, metadata,"
    " policy FROM keys ORDER BY created_at, id"
)


@contextlib.contextmanager
def database(admin_url: str) -> Iterator[str]:
    name = f"kgbench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}".encode())
    try:
        yield admin_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)".encode())


def median_ms(samples: list[tuple[float, float]]) -> str:
    wall = statistics.median(w for w, _ in samples) * 1e3
    cpu = statistics.median(c for _, c in samples) * 1e3
    return f"{wall:6.2f} ms wall, {cpu:5.2f} ms CPU"


def measure(fn: Callable[[], object], runs: int) -> str:
    samples = []
    for _ in range(runs):
        w, c = time.perf_counter(), time.process_time()
        fn()
        samples.append((time.perf_counter() - w, time.process_time() - c))
    return median_ms(samples)


async def ameasure(fn: Callable[[], Awaitable[object]], runs: int) -> str:
    samples = []
    for _ in range(runs):
        w, c = time.perf_counter(), time.process_time()
        await fn()
        samples.append((time.perf_counter() - w, time.process_time() - c))
    return median_ms(samples)


async def with_asyncpg(asyncpg: Any, url: str, runs: int) -> None:
    pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
    sql = f"INSERT INTO usage ({USAGE_COLUMNS}) VALUES ({', '.join(f'${i}' for i in range(1, 18))})"
    values = UsageMixin.usage_values(ROWS)
    last = sorted({r.key_id: r.ts for r in ROWS}.items())

    async def insert() -> None:
        async with pool.acquire() as conn, conn.transaction():
            await conn.executemany(sql, values)
            await conn.executemany(
                "UPDATE keys SET last_used_at = $1 WHERE id = $2"
                " AND (last_used_at IS NULL OR last_used_at < $1)",
                [(ts, k) for k, ts in last],
            )

    async def list_keys() -> list[KeyRecord]:
        async with pool.acquire() as conn:
            rows = await conn.fetch(KEY_SQL)
        return [KeyRecord(*r[:9], metadata=json.loads(r[9]), policy=json.loads(r[10])) for r in rows]

    print("asyncpg  write_usage 200 rows:", await ameasure(insert, runs))
    print("asyncpg  list_keys 1000:      ", await ameasure(list_keys, max(10, runs // 2)))
    await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    with database(args.admin_url) as url:
        store = PostgresStore(url)
        store.migrate()
        for i in range(1000):
            store.insert_key(KeyRecord(f"k{i}", f"key {i}", f"hash{i}", "kg_...abcd", float(i)), AUDIT)
        print("psycopg  write_usage 200 rows:", measure(lambda: store.write_usage(ROWS), args.runs))
        print("psycopg  list_keys 1000:      ", measure(store.list_keys, max(10, args.runs // 2)))
        store.close()
        try:
            asyncpg = importlib.import_module("asyncpg")
        except ImportError:
            print("asyncpg: not installed (see the docstring)")
            return
        asyncio.run(with_asyncpg(asyncpg, url, args.runs))


if __name__ == "__main__":
    main()
