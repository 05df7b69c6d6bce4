"""Results as a Markdown table and JSON, with the machine and commit they were measured on."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from harness.keygate_proc import REPO_ROOT


def _git(*args: str) -> str:
    proc = subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def keygate_commit() -> str:
    commit = _git("rev-parse", "--short=12", "HEAD") or "no-commit"
    return commit + ("+dirty" if _git("status", "--porcelain", "--", "src") else "")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(tool_versions: dict[str, str], load_average_start: float) -> dict[str, Any]:
    """Where and on what the run happened; load averages show other work competing for the CPUs."""
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "keygate_commit": keygate_commit(),
        "load_average_1min_start": round(load_average_start, 2),
        "load_average_1min_end": round(os.getloadavg()[0], 2),
        **tool_versions,
    }


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Give each keygate row its ratio to the direct row of the same variant (same run, same box)."""
    direct = {row["variant"]: row for row in rows if not row["through_keygate"]}
    for row in rows:
        base = direct.get(row["variant"])
        if row["through_keygate"] and base and base["rps"] and base["p50_ms"]:
            row["rps_ratio"] = round(row["rps"] / base["rps"], 3)
            row["p50_ratio"] = round(row["p50_ms"] / base["p50_ms"], 2)
            row["p50_added_ms"] = round(row["p50_ms"] - base["p50_ms"], 3)


def _fmt(value: float | None, pattern: str) -> str:
    return "—" if value is None else format(value, pattern)


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| scenario | req/s | p50 | p99 | keygate CPU µs/req | ratio keygate/direct (req/s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row['scenario']} | {row['rps']:,.0f} | {row['p50_ms']:.2f} ms | {row['p99_ms']:.2f} ms | "
            f"{_fmt(row.get('keygate_cpu_us_per_req'), '.0f')} | {_fmt(row.get('rps_ratio'), '.3g')} |"
        )
    return "\n".join(lines)


def _notes(rows: list[dict[str, Any]]) -> list[str]:
    notes = []
    for row in rows:
        if "p50_ratio" in row:
            notes.append(
                f"- {row['scenario']}: {row['rps_ratio']:.3g}x the direct req/s, p50 {row['p50_ratio']:.2f}x "
                f"(+{row['p50_added_ms']:.2f} ms), RSS {row['keygate_rss_kib_idle'] / 1024:.1f} MiB idle, "
                f"{row['keygate_rss_kib_after'] / 1024:.1f} MiB after the run."
            )
        if sum(row["errors"].values()):
            notes.append(f"- **{row['scenario']} had errors** {row['errors']}: its figures are not valid.")
    return notes


def _long_run(long_run: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    before, after = long_run["rss_kib_before"] / 1024, long_run["rss_kib_after"] / 1024
    idle = next(row.get("keygate_rss_kib_idle") for row in rows if row["scenario"] == long_run["scenario"])
    return [
        "",
        "## Long run",
        "",
        f"{long_run['requests']:,} requests through keygate ({long_run['scenario']}) in "
        f"{long_run['seconds']:.0f} s, {long_run['rps']:,.0f} req/s, {long_run['errors']} errors, "
        f"{_fmt(long_run['keygate_cpu_us_per_req'], '.0f')} µs CPU/req.",
        f"keygate RSS: {idle / 1024:.1f} MiB idle at start, {before:.1f} MiB before the long run "
        f"(after the measured run), {after:.1f} MiB after it ({after - before:+.1f} MiB).",
    ]


def markdown(report: dict[str, Any]) -> str:
    machine, load = report["machine"], report["load"]
    lines = [
        "# keygate benchmark: latest run",
        "",
        f"- date: {machine['date']}",
        f"- machine: {machine['nproc']} CPUs ({machine['cpu']}), Linux {machine['kernel']}, "
        f"Python {machine['python']}",
        f"- keygate commit: {machine['keygate_commit']}",
        f"- 1-min load average: {machine['load_average_1min_start']} at start, "
        f"{machine['load_average_1min_end']} at end (for {machine['nproc']} CPUs)",
        f"- tools: {machine['nginx']}; {machine['wrk']}",
        f"- load: wrk -t{load['threads']} -c{load['connections']} -d{load['duration_s']}s "
        f"after a {load['warmup_s']} s warm-up",
        f"- extra keygate config: {load['keygate_config_extra'] or 'none'}",
        "",
        table(report["rows"]),
        "",
        *_notes(report["rows"]),
    ]
    if report.get("long_run"):
        lines += _long_run(report["long_run"], report["rows"])
    return "\n".join(lines) + "\n"


def write(report: dict[str, Any], results_dir: Path) -> tuple[Path, Path]:
    results_dir.mkdir(parents=True, exist_ok=True)
    md_path, json_path = results_dir / "latest.md", results_dir / "latest.json"
    md_path.write_text(markdown(report))
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    return md_path, json_path
