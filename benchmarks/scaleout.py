#!/usr/bin/env python3
"""Scaled out against the embedded default, in one run: keygate on SQLite with in-process counters,
then one and two keygate instances sharing one PostgreSQL database and one Redis.

    python benchmarks/scaleout.py
    python benchmarks/scaleout.py --duration 20 --connections 64

Every configuration serves the same JSON chat request against the same nginx mock upstream. Five
configurations: the embedded default without limits and with the limits of ``limits-typical.yaml``
(a request rate, a token rate, a concurrency cap and a dollar budget per key, high enough that
nothing is refused, so the counters do their full work); one instance on PostgreSQL + Redis
without limits and with them; two such instances with them. What the Redis-backed limits cost over
in-process ones is (scaled with limits - scaled without) - (embedded with - embedded without). For each:
requests/s, keygate CPU µs per request (summed over the instances), and, scaled out, Redis commands
and round trips (read events) per request, Redis CPU per request, PostgreSQL transactions per second
and usage rows written per transaction. Redis is a private ``redis-server`` on a free port (so no
other client's commands are counted); PostgreSQL is the one on 127.0.0.1:5432, in a database made
for the run and dropped after it (``--pg`` for another server).
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import yaml
from harness import wrk
from harness.keygate_proc import Keygate, default_command
from harness.mock_upstream import start_mock_upstream
from harness.procs import private_redis, run_in_temp_dir
from harness.procstats import CpuMeter
from harness.scenarios import Scenario, check_one_request
from harness.tools import ensure_tools

LIMITS = Path(__file__).resolve().parent / "limits-typical.yaml"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10, help="measured seconds per configuration (10)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up seconds per configuration (3)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections in all (32)")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432", help="PostgreSQL server URL")
    parser.add_argument("--keep-tmp", action="store_true")
    return parser.parse_args(argv)


# -- dependencies --------------------------------------------------------------------------------


def redis_info(port: int) -> dict[str, float]:
    """Commands processed, read events and CPU seconds of the Redis server so far."""
    import redis

    client = redis.Redis(port=port)
    try:
        stats, cpu, calls = client.info("stats"), client.info("cpu"), client.info("commandstats")
    finally:
        client.close()
    return {
        "evalsha": float(calls.get("cmdstat_evalsha", {}).get("calls", 0)),
        "commands": float(stats["total_commands_processed"]),
        "reads": float(stats["total_reads_processed"]),
        "cpu": float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
    }


@contextmanager
def fresh_database(server: str) -> Iterator[str]:
    import psycopg

    name = f"keygate_bench_{secrets.token_hex(4)}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{server}/{name}"
    finally:
        with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pg_counts(url: str) -> dict[str, float]:
    """Committed transactions of the database and its usage rows so far."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_force_next_flush()")
        (xacts,) = conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone() or (0,)
        (rows,) = conn.execute("SELECT count(*) FROM usage").fetchone() or (0,)
    return {"xacts": float(xacts), "rows": float(rows)}


# -- one configuration -------------------------------------------------------------------------------


class Setup(Keygate):
    """A keygate setup with extra environment (the shared pepper and master key when scaled out)."""

    extra_env: dict[str, str]

    def env(self) -> dict[str, str]:
        return {**super().env(), **self.extra_env}


def make_setup(tmp: Path, extra: dict[str, Any], env: dict[str, str]) -> Setup:
    tmp.mkdir(parents=True, exist_ok=True)
    command, command_env = default_command()
    setup = Setup(tmp, command, command_env, extra)
    setup.extra_env = env
    return setup


def run_load(tool: str, scenarios: list[Scenario], tmp: Path, connections: int, seconds: int) -> list[Any]:
    """wrk against every instance at once, the connections split between them."""
    shape = wrk.LoadShape(1, max(1, connections // len(scenarios)))
    results: list[Any] = [None] * len(scenarios)
    # Written before any wrk starts: the instances' scenarios share one script file, and a wrk
    # reading it while another thread rewrites it would run without it (plain GETs, no key).
    scripts = [scenario.script(tmp) for scenario in scenarios]

    def one(i: int) -> None:
        results[i] = wrk.run(tool, scenarios[i].url, scripts[i], shape, seconds)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(scenarios))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def measure(
    label: str,
    setup: Setup,
    instances: int,
    upstream_url: str,
    nginx_pid: int,
    args: argparse.Namespace,
    tool: str,
    redis_port: int | None,
    database_url: str | None,
) -> dict[str, Any]:
    authorization = f"Bearer {setup.create_client_key(upstream_url)}"
    with ExitStack() as stack:
        served = [stack.enter_context(setup.serve(f"{label}-{i}", upstream_url)) for i in range(instances)]
        scenarios = [
            Scenario(f"{label} #{i}", "json", True, port, authorization, proc.pid, nginx_pid)
            for i, (proc, port) in enumerate(served)
        ]
        for scenario in scenarios:
            check_one_request(scenario)
        run_load(tool, scenarios, setup.tmp, args.connections, args.warmup)
        time.sleep(1.0)  # let the warm-up's usage rows and spend reach the store
        meters = [CpuMeter(proc.pid) for proc, _ in served]
        redis_before = redis_info(redis_port) if redis_port else None
        pg_before = pg_counts(database_url) if database_url else None
        for meter in meters:
            meter.start()
        started = time.monotonic()
        results = run_load(tool, scenarios, setup.tmp, args.connections, args.duration)
        wall = time.monotonic() - started
        cpu = sum(meter.stop() for meter in meters)
        time.sleep(1.5)  # the last batch of usage rows, then PostgreSQL's statistics flush
        requests = sum(r.requests for r in results)
        errors = sum(r.error_count for r in results)
        row: dict[str, Any] = {
            "configuration": label,
            "instances": instances,
            "requests": requests,
            "errors": errors,
            "rps": round(requests / wall, 1),
            "keygate_cpu_us_per_req": round(cpu * 1e6 / requests, 1) if requests else None,
        }
        if redis_before is not None and redis_port:
            after = redis_info(redis_port)
            row["redis_evalsha_per_req"] = round((after["evalsha"] - redis_before["evalsha"]) / requests, 2)
            row["redis_commands_per_req"] = round(
                (after["commands"] - redis_before["commands"]) / requests, 2
            )
            row["redis_round_trips_per_req"] = round((after["reads"] - redis_before["reads"]) / requests, 2)
            row["redis_cpu_us_per_req"] = round((after["cpu"] - redis_before["cpu"]) * 1e6 / requests, 1)
        if pg_before is not None and database_url:
            after = pg_counts(database_url)
            xacts = after["xacts"] - pg_before["xacts"]
            row["pg_xacts_per_s"] = round(xacts / wall, 1)
            row["usage_rows_per_xact"] = (
                round((after["rows"] - pg_before["rows"]) / xacts, 1) if xacts else None
            )
    return row


def run(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    tools = ensure_tools()
    limits = yaml.safe_load(LIMITS.read_text())
    rows = []
    with ExitStack() as stack:
        upstream = stack.enter_context(start_mock_upstream(tools.nginx, tmp))
        nginx_pid = upstream.process.pid
        for label, extra in (("embedded, no limits", {}), ("embedded (SQLite, in process)", limits)):
            embedded = make_setup(tmp / f"embedded-{len(rows)}", extra, {})
            rows.append(
                measure(label, embedded, 1, upstream.json_base_url, nginx_pid, args, tools.wrk, None, None)
            )
            print(rows[-1], flush=True)
        for instances, with_limits in ((1, False), (1, True), (2, True)):
            redis_port = stack.enter_context(private_redis(tmp))
            database_url = stack.enter_context(fresh_database(args.pg))
            shared = {
                "KEYGATE_PEPPER": secrets.token_urlsafe(32),
                "KEYGATE_MASTER_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
            }
            extra = {
                **(limits if with_limits else {}),
                "database_url": database_url,
                "redis_url": f"redis://127.0.0.1:{redis_port}/0",
            }
            setup = make_setup(tmp / f"scaled-{len(rows)}", extra, shared)
            label = f"PostgreSQL + Redis, {instances} instance{'s' if instances > 1 else ''}"
            label += "" if with_limits else ", no limits"
            rows.append(
                measure(
                    label,
                    setup,
                    instances,
                    upstream.json_base_url,
                    nginx_pid,
                    args,
                    tools.wrk,
                    redis_port,
                    database_url,
                )
            )
            print(rows[-1], flush=True)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    base = rows[1]["keygate_cpu_us_per_req"] or 0.0  # the embedded default with the same limits
    lines = [
        "| configuration | req/s | keygate CPU µs/req | vs embedded | EVALSHA/req"
        " | Redis commands/req (scripts' own included) | Redis reads (round trips)/req"
        " | Redis CPU µs/req | PostgreSQL xact/s | usage rows/xact |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        cpu = r["keygate_cpu_us_per_req"]
        delta = f"{cpu - base:+.0f}" if cpu is not None and r is not rows[1] else ""
        cells = [
            r["configuration"] + (f" ({r['errors']} errors)" if r["errors"] else ""),
            f"{r['rps']:,.0f}",
            f"{cpu:.0f}" if cpu is not None else "",
            delta,
            *(
                str(r.get(k, ""))
                for k in (
                    "redis_evalsha_per_req",
                    "redis_commands_per_req",
                    "redis_round_trips_per_req",
                    "redis_cpu_us_per_req",
                    "pg_xacts_per_s",
                    "usage_rows_per_xact",
                )
            ),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    code, rows = run_in_temp_dir("keygate-scaleout-", lambda tmp: run(args, tmp), keep=args.keep_tmp)
    if rows is None:
        return code
    print()
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
