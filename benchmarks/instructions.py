#!/usr/bin/env python3
"""What rate limits and budgets cost end to end, counted in CPU instructions: a repeatable figure.

    python benchmarks/instructions.py                 # about 8 minutes
    python benchmarks/instructions.py --short 5 --long 15   # quicker, noisier

Timings on a shared machine drift by tens of percent; instruction counts do not. Each config runs
``keygate serve`` under ``valgrind --tool=callgrind`` (whole process: granian, the event loop, the
writer threads) twice, loaded by wrk for ``--short`` and then ``--long`` seconds, and reports

    (instructions of the long run - instructions of the short run) / (their difference in requests)

so start-up, warm-up and shutdown cancel out and what is left is the cost of one more request.
Callgrind runs a program about 50 times slower, so loads are light (wrk -t1 -c8) and runs long.
Needs nginx, wrk and valgrind (``benchmarks/setup.sh`` installs them).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from harness import wrk
from harness.keygate_proc import Keygate, default_command
from harness.mock_upstream import start_mock_upstream
from harness.procs import HarnessError, ManagedProcess, free_port, private_redis, run_in_temp_dir
from harness.scenarios import Scenario, check_one_request
from harness.tools import SETUP_SCRIPT, ensure_tools
from limits import configs

_TOTALS = re.compile(r"^(?:summary|totals):\s*(\d+)", re.MULTILINE)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--short", type=int, default=10, help="seconds of load in the short run (10)")
    parser.add_argument("--long", type=int, default=40, help="seconds of load in the long run (40)")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections (8)")
    parser.add_argument(
        "--only", nargs="+", metavar="WORD", help="only the configs whose name holds one of these words"
    )
    parser.add_argument("--no-redis", action="store_true", help="leave out the config on Redis counters")
    return parser.parse_args(argv)


def find_valgrind() -> str:
    """valgrind's path, running setup.sh once if it is missing."""
    found = shutil.which("valgrind")
    if found is None:
        print(f"valgrind missing; running {SETUP_SCRIPT}", flush=True)
        subprocess.run(["sh", str(SETUP_SCRIPT)], check=False)
        found = shutil.which("valgrind")
    if found is None:
        raise HarnessError(f"could not install valgrind (see the output of {SETUP_SCRIPT} above)")
    return found


@dataclass(frozen=True)
class Load:
    """What every callgrind run shares: the tools, the upstream and the client's credentials."""

    wrk: str
    valgrind: str
    connections: int
    upstream_url: str
    authorization: str

    def run(self, keygate: Keygate, name: str, seconds: int) -> tuple[int, int]:
        """(instructions, requests) of one keygate process under callgrind, loaded for ``seconds``."""
        out = keygate.tmp / f"{name}.callgrind"
        port = free_port()
        config = keygate.write_config(name, port, self.upstream_url)
        cmd = [self.valgrind, "--tool=callgrind", f"--callgrind-out-file={out}", *keygate.command]
        # A fixed hash seed: with a random one, dict layouts (and so instruction counts) vary by run.
        env = {**keygate.env(), "PYTHONHASHSEED": "0"}
        process = ManagedProcess(
            f"keygate ({name})", [*cmd, "--config", str(config), "serve"], keygate.tmp / f"{name}.log", env
        )
        try:
            process.wait_for_port(port, timeout=300.0)
            scenario = Scenario(name, "json", True, port, self.authorization, process.pid, 0)
            check_one_request(scenario)
            shape = wrk.LoadShape(1, self.connections)
            result = wrk.run(self.wrk, scenario.url, scenario.script(keygate.tmp), shape, seconds)
            if sum(result.errors.values()):
                raise HarnessError(f"{name}: errors {result.errors}")
        finally:
            process.stop(timeout=120.0)
        found = _TOTALS.search(out.read_text(errors="replace"))
        if found is None:
            raise HarnessError(f"{name}: no instruction total in {out}")
        return int(found.group(1)), result.requests + 1  # + the checked request


def run(args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    tools = ensure_tools()
    valgrind = find_valgrind()
    command, env = default_command()
    per_request: dict[str, float] = {}
    with start_mock_upstream(tools.nginx, tmp) as upstream, contextlib.ExitStack() as stack:
        redis_port = None if args.no_redis else stack.enter_context(private_redis(tmp))
        chosen = configs(redis_port)
        if args.only:
            chosen = {n: c for n, c in chosen.items() if n == "no limits" or any(w in n for w in args.only)}
        load: Load | None = None
        for index, (name, config) in enumerate(chosen.items()):
            extra = dict(config)
            extra["admin_listen"] = f"127.0.0.1:{free_port()}"
            # Usage rows and spend are written at shutdown only: under callgrind a run serves ~50
            # times fewer requests per second, so a write every 0.5 s would weigh ~50 times more
            # per request than in real use. Written once, the batch costs per row, as it should.
            extra["usage_flush_interval"] = 3600
            keygate = Keygate(tmp, command, env, extra)
            if load is None:
                key = keygate.create_client_key(upstream.json_base_url)
                load = Load(tools.wrk, valgrind, args.connections, upstream.json_base_url, f"Bearer {key}")
            short, long = (
                load.run(keygate, f"cg-{index}-{seconds}s", seconds) for seconds in (args.short, args.long)
            )
            if long[1] <= short[1]:
                raise HarnessError(f"{name}: the long run served no more requests than the short one")
            per_request[name] = (long[0] - short[0]) / (long[1] - short[1])
            print(f"  {name}: {short[1]:,} and {long[1]:,} requests: ", end="")
            print(f"{per_request[name]:,.0f} instructions per request", flush=True)
    return per_request


def report(per_request: dict[str, float]) -> str:
    base = per_request["no limits"]
    lines = [
        "| keygate config | instructions per request | added by limits |",
        "| --- | ---: | ---: |",
    ]
    for name, value in per_request.items():
        delta = "—" if name == "no limits" else f"+{value - base:,.0f} ({(value - base) / base:+.0%})"
        lines.append(f"| {name} | {value:,.0f} | {delta} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    code, per_request = run_in_temp_dir("keygate-instructions-", lambda tmp: run(args, tmp))
    if per_request is None:
        return code
    print()
    print(f"keygate under callgrind, wrk -t1 -c{args.connections}, chat JSON, ", end="")
    print(f"runs of {args.short} s and {args.long} s:")
    print()
    print(report(per_request))
    return 0


if __name__ == "__main__":
    sys.exit(main())
