#!/usr/bin/env python3
"""What rate limits and budgets cost end to end: keygate without limits and with each limit set,
measured in interleaved rounds against the same nginx, reported as medians and deltas.

    python benchmarks/limits.py                       # 5 rounds of 6 s per config, chat JSON
    python benchmarks/limits.py --rounds 9 --duration 8s

Keygate processes run for the whole benchmark (idle ones use no CPU), ``--processes`` of them per
config (2 by default); each round measures every process once, in a rotating order, so slow drifts
of a shared machine hit all of them alike. Two processes with the same config can differ by several
µs per request (memory layout, hash seeds), so each config's figure is the median over all its
processes and rounds, and the spread between the per-process medians of the config without limits
is printed as the noise floor. The figure to read is the median CPU µs per request of each config
and its difference from the config without limits.

One more config serves the typical limits from counters in Redis (a private ``redis-server`` on a
free port, SQLite as the store), the way every instance of a scaled-out gateway keeps them; its
difference from the same limits in process is what sharing the counters costs (``--no-redis``
leaves it out).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from pathlib import Path
from typing import Any

from harness import wrk
from harness.keygate_proc import Keygate, default_command, load_extra_config
from harness.mock_upstream import start_mock_upstream
from harness.procs import HarnessError, free_port, private_redis, run_in_temp_dir
from harness.scenarios import Scenario, Settings, measure
from harness.tools import ensure_tools
from run import seconds

HERE = Path(__file__).resolve().parent
CONFIGS = {
    "no limits": None,
    "typical limits (rpm, tpm, max_concurrent, US$ budget)": HERE / "limits-typical.yaml",
    "every limit kind": HERE / "limits-on.yaml",
}
# The typical limits once more, on counters in Redis (shared by every instance) instead of in process.
ON_REDIS = "typical limits, counters in Redis"
REDIS_CONFIGS = {ON_REDIS: HERE / "limits-typical.yaml"}


def configs(redis_port: int | None) -> dict[str, dict[str, Any]]:
    """Each config's extra settings; the Redis ones only given a Redis server's port."""
    chosen = {name: load_extra_config(path) for name, path in CONFIGS.items()}
    if redis_port is not None:
        for name, path in REDIS_CONFIGS.items():
            chosen[name] = {**load_extra_config(path), "redis_url": f"redis://127.0.0.1:{redis_port}/0"}
    return chosen


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds (5)")
    parser.add_argument("--duration", type=seconds, default=6, help="wrk run per config and round (6s)")
    parser.add_argument("--warmup", type=seconds, default=2, help="warm-up per config and round (2s)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    parser.add_argument("--processes", type=int, default=2, help="keygate processes per config (2)")
    parser.add_argument(
        "--no-redis", action="store_true", help="leave out the config on Redis counters (needs redis-server)"
    )
    return parser.parse_args(argv)


def run(args: argparse.Namespace, tmp: Path) -> dict[str, list[dict[str, Any]]]:
    tools = ensure_tools()
    settings = Settings(tools.wrk, wrk.LoadShape(1, args.connections), args.warmup, args.duration, tmp)
    command, env = default_command()
    with start_mock_upstream(tools.nginx, tmp) as upstream, contextlib.ExitStack() as stack:
        redis_port = None if args.no_redis else stack.enter_context(private_redis(tmp))
        chosen = configs(redis_port)
        samples: dict[str, list[dict[str, Any]]] = {name: [] for name in chosen}
        scenarios: list[tuple[str, int, Scenario]] = []
        authorization = ""
        for copy in range(args.processes):
            for index, (name, config) in enumerate(chosen.items()):
                extra = dict(config)
                extra["admin_listen"] = f"127.0.0.1:{free_port()}"  # several run at once
                keygate = Keygate(tmp, command, env, extra)
                if not authorization:
                    authorization = f"Bearer {keygate.create_client_key(upstream.json_base_url)}"
                label = f"keygate-{index}-{copy}"
                process, port = stack.enter_context(keygate.serve(label, upstream.json_base_url))
                scenario = Scenario(
                    name, "json", True, port, authorization, process.pid, upstream.process.pid
                )
                scenarios.append((name, copy, scenario))
        for round_no in range(args.rounds):
            shift = round_no % len(scenarios)
            for name, copy, scenario in scenarios[shift:] + scenarios[:shift]:
                row = measure(scenario, settings)
                if sum(row["errors"].values()):
                    raise HarnessError(f"{name}: errors {row['errors']}")
                row["process"] = copy
                samples[name].append(row)
                print(
                    f"  round {round_no + 1}, {name} (process {copy + 1}): {row['rps']:,.0f} req/s, "
                    f"{row['keygate_cpu_us_per_req']:.0f} µs CPU/req",
                    flush=True,
                )
    return samples


def report(samples: dict[str, list[dict[str, Any]]]) -> str:
    base = statistics.median(r["keygate_cpu_us_per_req"] for r in samples["no limits"])
    lines = [
        "| keygate config | req/s (median) | keygate CPU µs/req (median) | added by limits |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, rows in samples.items():
        cpu = statistics.median(r["keygate_cpu_us_per_req"] for r in rows)
        rps = statistics.median(r["rps"] for r in rows)
        delta = "—" if name == "no limits" else f"{cpu - base:+.0f} µs"
        lines.append(f"| {name} | {rps:,.0f} | {cpu:.0f} | {delta} |")
    typical = next(name for name in samples if name.startswith("typical limits ("))
    if ON_REDIS in samples:
        shared = statistics.median(r["keygate_cpu_us_per_req"] for r in samples[ON_REDIS])
        in_process = statistics.median(r["keygate_cpu_us_per_req"] for r in samples[typical])
        lines.append("")
        lines.append(
            f"Counters in Redis over the same limits in process: {shared - in_process:+.0f} µs CPU/req."
        )
    per_process = sorted(
        statistics.median(r["keygate_cpu_us_per_req"] for r in samples["no limits"] if r["process"] == p)
        for p in {r["process"] for r in samples["no limits"]}
    )
    if len(per_process) > 1:
        lines.append("")
        lines.append(
            "Noise floor: the no-limits processes' own medians span "
            f"{per_process[0]:.0f} to {per_process[-1]:.0f} µs CPU/req "
            f"({per_process[-1] - per_process[0]:.0f} µs)."
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    code, samples = run_in_temp_dir("keygate-limits-", lambda tmp: run(args, tmp))
    if samples is None:
        return code
    print()
    print(
        f"{args.rounds} interleaved rounds of {args.duration} s, {args.processes} keygate processes per "
        f"config, wrk -t1 -c{args.connections}, chat JSON:"
    )
    print()
    print(report(samples))
    return 0


if __name__ == "__main__":
    sys.exit(main())
