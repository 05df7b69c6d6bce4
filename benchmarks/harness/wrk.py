"""Drive load with wrk and turn its output into numbers.

The Lua `done()` hook prints one machine-readable JSON line (marker `KGBENCH_RESULT`); if that line
is missing (another wrk build, a Lua error), the human `--latency` report is parsed instead.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.procs import HarnessError

MARKER = "KGBENCH_RESULT "

_DONE_HOOK = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"duration_us":%.0f,"requests":%.0f,"bytes":%.0f,' ..
    '"errors":{"connect":%.0f,"read":%.0f,"write":%.0f,"status":%.0f,"timeout":%.0f},' ..
    '"latency_us":{"mean":%.1f,"max":%.0f,"p50":%.0f,"p90":%.0f,"p99":%.0f,"p999":%.0f}}\n',
    marker, summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end
"""


@dataclass(frozen=True)
class LoadShape:
    threads: int
    connections: int


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    p50_ms: float
    p99_ms: float
    errors: dict[str, int] = field(default_factory=dict)
    mean_ms: float | None = None
    p90_ms: float | None = None
    p999_ms: float | None = None
    source: str = "lua"

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "rps": round(self.rps, 1)}


def _lua_long_string(text: str) -> str:
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    return f"[{'=' * level}[{text}]{'=' * level}]"


def write_script(path: Path, body: str, authorization: str | None) -> Path:
    """A wrk Lua script POSTing `body`; owner-only, since it may hold a client key."""
    lines = [
        'wrk.method = "POST"',
        f"wrk.body = {_lua_long_string(body)}",
        'wrk.headers["Content-Type"] = "application/json"',
    ]
    if authorization is not None:
        lines.append(f'wrk.headers["Authorization"] = {_lua_long_string(authorization)}')
    lines.append(f"local marker = {_lua_long_string(MARKER)}")
    path.touch(mode=0o600)
    path.write_text("\n".join(lines) + "\n" + _DONE_HOOK)
    return path


def run(wrk: str, url: str, script: Path, shape: LoadShape, seconds: int) -> WrkResult:
    """Run wrk once and parse its result; the URL's path is the one requested."""
    cmd = [
        wrk,
        f"-t{shape.threads}",
        f"-c{shape.connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if proc.returncode != 0:
        raise HarnessError(f"wrk failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return parse(proc.stdout)


def parse(output: str) -> WrkResult:
    """Parse wrk's stdout: the Lua JSON line if present, else the --latency text report."""
    for line in output.splitlines():
        if line.startswith(MARKER):
            try:
                return _from_lua(json.loads(line[len(MARKER) :]))
            except (ValueError, KeyError, TypeError):
                break
    return _from_text(output)


def _from_lua(data: dict[str, Any]) -> WrkResult:
    latency, errors = data["latency_us"], data["errors"]
    return WrkResult(
        requests=int(data["requests"]),
        duration_s=float(data["duration_us"]) / 1e6,
        p50_ms=latency["p50"] / 1000,
        p99_ms=latency["p99"] / 1000,
        errors={name: int(count) for name, count in errors.items()},
        mean_ms=latency["mean"] / 1000,
        p90_ms=latency["p90"] / 1000,
        p999_ms=latency["p999"] / 1000,
    )


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_DURATION = r"([\d.]+)(us|ms|s|m|h)"


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNIT_MS[unit]


def _from_text(output: str) -> WrkResult:
    total = re.search(r"(\d+) requests in " + _DURATION, output)
    p50 = re.search(r"^\s*50(?:\.0+)?%\s+" + _DURATION, output, re.MULTILINE)
    p99 = re.search(r"^\s*99(?:\.0+)?%\s+" + _DURATION, output, re.MULTILINE)
    if not (total and p50 and p99):
        raise HarnessError(f"could not parse wrk output:\n{output}")
    errors: dict[str, int] = {}
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if socket_errors:
        for name, count in zip(("connect", "read", "write", "timeout"), socket_errors.groups(), strict=True):
            errors[name] = int(count)
    status = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors["status"] = int(status.group(1)) if status else 0
    requests = int(total.group(1))
    # "requests in 10.10s" is rounded; Requests/sec gives the exact duration.
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    duration_s = requests / float(rate.group(1)) if rate and float(rate.group(1)) else 0.0
    return WrkResult(
        requests=requests,
        duration_s=duration_s or _ms(total.group(2), total.group(3)) / 1000,
        p50_ms=_ms(*p50.groups()),
        p99_ms=_ms(*p99.groups()),
        errors=errors,
        source="text",
    )
