#!/usr/bin/env python3
"""Benchmark keygate against a mock OpenAI upstream (nginx) with wrk.

    python benchmarks/run.py                  # JSON and streamed chat, direct vs through keygate
    python benchmarks/run.py --million        # plus a long run (>= 1,000,000 requests) for RSS growth

See benchmarks/README.md for what the figures mean.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from harness import report, wrk
from harness.keygate_proc import Keygate, default_command, load_extra_config
from harness.mock_upstream import MockUpstream, start_mock_upstream
from harness.procs import run_in_temp_dir
from harness.scenarios import Scenario, Settings, measure, million
from harness.tools import Tools, ensure_tools

RESULTS_DIR = Path(__file__).resolve().parent / "results"
VARIANTS = {"json": "chat JSON", "stream": "chat streamed (SSE)"}
# The direct runs send an Authorization header too, so both sides get requests of the same size.
DIRECT_AUTHORIZATION = "Bearer sk-direct-not-checked"


def seconds(text: str) -> int:
    """`10`, `10s`, `2m` or `1m30s` as whole seconds."""
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s?)?", text.strip())
    if not match or not any(match.groups()):
        raise argparse.ArgumentTypeError(f"not a duration: {text!r}")
    minutes, secs = (int(group or 0) for group in match.groups())
    return minutes * 60 + secs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=seconds, default=10, help="measured wrk run per scenario (10s)")
    parser.add_argument("--warmup", type=seconds, default=3, help="warm-up wrk run per scenario (3s)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    # One wrk thread: on a 2-core machine a second one takes a core away from the process under test.
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (1)")
    parser.add_argument(
        "--variants", default="json,stream", help="comma-separated: json, stream (default both)"
    )
    parser.add_argument(
        "--million",
        action="store_true",
        help="also push >= 1,000,000 requests through keygate, RSS before/after",
    )
    parser.add_argument(
        "--million-chunk", type=seconds, default=30, help="length of each long-run wrk run (30s)"
    )
    parser.add_argument(
        "--keygate-config-extra",
        type=Path,
        metavar="FILE",
        help="YAML merged into the generated keygate.yaml",
    )
    parser.add_argument(
        "--keygate-cmd",
        help="command that runs keygate (default: `keygate` on PATH, else python -m keygate on src/)",
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where latest.md/json go")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs, db)")
    args = parser.parse_args(argv)
    args.variants = [name.strip() for name in args.variants.split(",") if name.strip()]
    unknown = set(args.variants) - set(VARIANTS)
    if unknown or not args.variants:
        parser.error(f"--variants takes json and/or stream, not {sorted(unknown) or 'nothing'}")
    return args


def _keygate(args: argparse.Namespace, tmp: Path) -> Keygate:
    command, env = (shlex.split(args.keygate_cmd), {}) if args.keygate_cmd else default_command()
    return Keygate(tmp, command, env, load_extra_config(args.keygate_config_extra))


def _print_row(row: dict[str, Any]) -> None:
    cpu = row.get("keygate_cpu_us_per_req")
    extra = f", keygate {cpu:.0f} µs CPU/req" if cpu is not None else ""
    errors = sum(row["errors"].values())
    print(
        f"  {row['scenario']}: {row['rps']:,.0f} req/s, p50 {row['p50_ms']:.2f} ms, "
        f"p99 {row['p99_ms']:.2f} ms{extra}" + (f", {errors} ERRORS {row['errors']}" if errors else ""),
        flush=True,
    )


def run_benchmark(args: argparse.Namespace, tools: Tools, tmp: Path) -> dict[str, Any]:
    load_average_start = os.getloadavg()[0]
    settings = Settings(
        tools.wrk, wrk.LoadShape(args.threads, args.connections), args.warmup, args.duration, tmp
    )
    keygate = _keygate(args, tmp)
    rows: list[dict[str, Any]] = []
    long_run = None
    with start_mock_upstream(tools.nginx, tmp) as upstream:
        authorization = f"Bearer {keygate.create_client_key(upstream.json_base_url)}"
        for variant in args.variants:
            with_long_run = args.million and variant == args.variants[0]
            variant_rows, variant_long_run = _run_variant(
                variant,
                upstream,
                keygate,
                authorization,
                settings,
                args.million_chunk if with_long_run else 0,
            )
            rows += variant_rows
            long_run = long_run or variant_long_run
    report.add_ratios(rows)
    return {
        "machine": report.machine_info(tools.versions(), load_average_start),
        "load": {
            "threads": args.threads,
            "connections": args.connections,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "keygate_config_extra": str(args.keygate_config_extra) if args.keygate_config_extra else None,
            "keygate_command": list(keygate.command),
        },
        "rows": rows,
        "long_run": long_run,
    }


def _run_variant(
    variant: str,
    upstream: MockUpstream,
    keygate: Keygate,
    authorization: str,
    settings: Settings,
    long_run_chunk_s: int,
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Direct to nginx, then through a keygate serving this variant's upstream (and the long run)."""
    port, base_url = _upstream_for(upstream, variant)
    label = VARIANTS[variant]
    nginx_pid = upstream.process.pid
    print(f"{label}:", flush=True)
    direct = Scenario(f"direct, {label}", variant, False, port, DIRECT_AUTHORIZATION, None, nginx_pid)
    rows = [measure(direct, settings)]
    _print_row(rows[-1])
    long_run = None
    with keygate.serve(f"keygate-{variant}", base_url) as (process, keygate_port):
        print(f"  keygate pid {process.pid} (profile: py-spy record -o profile.svg --pid {process.pid})")
        proxied = Scenario(
            f"keygate, {label}", variant, True, keygate_port, authorization, process.pid, nginx_pid
        )
        rows.append(measure(proxied, settings))
        _print_row(rows[-1])
        if long_run_chunk_s:
            long_run = million(proxied, settings, long_run_chunk_s)
    return rows, long_run


def _upstream_for(upstream: MockUpstream, variant: str) -> tuple[int, str]:
    if variant == "stream":
        return upstream.stream_port, upstream.stream_base_url
    return upstream.json_port, upstream.json_base_url


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    code, result = run_in_temp_dir(
        "keygate-bench-", lambda tmp: run_benchmark(args, ensure_tools(), tmp), keep=args.keep_tmp
    )
    if result is None:
        return code
    md_path, json_path = report.write(result, args.results_dir)
    print()
    print(report.markdown(result))
    print(f"written: {md_path}, {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
