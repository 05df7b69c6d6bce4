"""One benchmark scenario: check one request works, warm up, then a measured wrk run with CPU meters."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import wrk
from harness.procs import HarnessError
from harness.procstats import CpuMeter, rss_kib

CHAT_PATH = "/v1/chat/completions"
_PROMPT = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "Say hello in one short sentence please"}],
}


def request_body(stream: bool) -> str:
    body: dict[str, Any] = dict(_PROMPT)
    if stream:
        body["stream"] = True
    return json.dumps(body, separators=(",", ":"))


@dataclass(frozen=True)
class Settings:
    wrk: str
    shape: wrk.LoadShape
    warmup_s: int
    duration_s: int
    tmp: Path


@dataclass
class Scenario:
    name: str
    variant: str  # "json" or "stream"
    through_keygate: bool
    port: int
    authorization: str | None
    keygate_pid: int | None
    nginx_pid: int
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{CHAT_PATH}"

    @property
    def body(self) -> str:
        return request_body(stream=self.variant == "stream")

    @property
    def slug(self) -> str:
        return f"{'keygate' if self.through_keygate else 'direct'}-{self.variant}"

    def script(self, tmp: Path) -> Path:
        return wrk.write_script(tmp / f"{self.slug}.lua", self.body, self.authorization)


def check_one_request(scenario: Scenario) -> None:
    """Fail fast with a readable message when a single request does not succeed."""
    headers = {"Content-Type": "application/json"}
    if scenario.authorization:
        headers["Authorization"] = scenario.authorization
    request = urllib.request.Request(scenario.url, scenario.body.encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            payload = response.read()
    except urllib.error.HTTPError as error:
        detail = error.read()[:500].decode(errors="replace")
        raise HarnessError(f"{scenario.name}: probe request got HTTP {error.code}: {detail}") from None
    except OSError as error:
        raise HarnessError(f"{scenario.name}: probe request failed: {error}") from None
    if not _looks_right(scenario.variant, payload):
        raise HarnessError(f"{scenario.name}: unexpected probe response: {payload[:300]!r}")


def _looks_right(variant: str, payload: bytes) -> bool:
    if variant == "stream":
        return b"[DONE]" in payload and b"chat.completion.chunk" in payload
    try:
        return json.loads(payload)["usage"]["total_tokens"] == 21
    except (ValueError, KeyError, TypeError):
        return False


def measure(scenario: Scenario, settings: Settings) -> dict[str, Any]:
    """Warm-up run, then the measured run with CPU meters on keygate and nginx."""
    rss_idle = rss_kib(scenario.keygate_pid) if scenario.keygate_pid else None
    check_one_request(scenario)
    script = scenario.script(settings.tmp)
    if settings.warmup_s > 0:
        wrk.run(settings.wrk, scenario.url, script, settings.shape, settings.warmup_s)
    row = run_measured(scenario, settings, script, settings.duration_s)
    if rss_idle is not None:
        row["keygate_rss_kib_idle"] = rss_idle
    scenario.result = row
    return row


def run_measured(scenario: Scenario, settings: Settings, script: Path, seconds: int) -> dict[str, Any]:
    nginx_cpu = CpuMeter(scenario.nginx_pid)
    keygate_cpu = CpuMeter(scenario.keygate_pid) if scenario.keygate_pid else None
    rss_before = rss_kib(scenario.keygate_pid) if scenario.keygate_pid else None
    nginx_cpu.start()
    if keygate_cpu:
        keygate_cpu.start()
    started = time.monotonic()
    result = wrk.run(settings.wrk, scenario.url, script, settings.shape, seconds)
    wall = time.monotonic() - started
    row: dict[str, Any] = {
        "scenario": scenario.name,
        "variant": scenario.variant,
        "through_keygate": scenario.through_keygate,
        "wall_s": round(wall, 2),
        **result.as_dict(),
        "nginx_cpu_us_per_req": _per_request(nginx_cpu.stop(), result.requests),
    }
    if keygate_cpu and scenario.keygate_pid:
        row["keygate_cpu_s"] = round(keygate_cpu.stop(), 2)
        row["keygate_cpu_us_per_req"] = _per_request(row["keygate_cpu_s"], result.requests)
        row["keygate_rss_kib_before"] = rss_before
        row["keygate_rss_kib_after"] = rss_kib(scenario.keygate_pid)
    return row


def _per_request(cpu_s: float, requests: int) -> float | None:
    return round(cpu_s * 1e6 / requests, 1) if requests else None


def million(scenario: Scenario, settings: Settings, chunk_s: int, target: int = 1_000_000) -> dict[str, Any]:
    """Repeat wrk runs through keygate until `target` requests completed; RSS before, during, after."""
    if not scenario.keygate_pid:
        raise HarnessError("the long run needs a keygate scenario")
    script = scenario.script(settings.tmp)
    rss_start = rss_kib(scenario.keygate_pid)
    total_requests = total_errors = 0
    total_cpu = total_seconds = 0.0
    samples = []
    while total_requests < target:
        row = run_measured(scenario, settings, script, chunk_s)
        total_requests += row["requests"]
        total_errors += sum(row["errors"].values())
        total_cpu += row["keygate_cpu_s"]
        total_seconds += row["duration_s"]
        samples.append({"requests": total_requests, "rss_kib": row["keygate_rss_kib_after"]})
        print(
            f"  long run: {total_requests:>9,} requests, {row['rps']:.0f} req/s, "
            f"RSS {row['keygate_rss_kib_after'] / 1024:.1f} MiB",
            flush=True,
        )
    return {
        "scenario": scenario.name,
        "requests": total_requests,
        "errors": total_errors,
        "seconds": round(total_seconds, 1),
        "rps": round(total_requests / total_seconds, 1) if total_seconds else 0.0,
        "keygate_cpu_us_per_req": _per_request(total_cpu, total_requests),
        "rss_kib_before": rss_start,
        "rss_kib_after": rss_kib(scenario.keygate_pid),
        "rss_samples": samples,
    }
