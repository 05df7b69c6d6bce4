"""Run the keygate under test: generated config, a client key from the CLI, `serve` as a child."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness.procs import HarnessError, ManagedProcess, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
UPSTREAM_KEY = "sk-bench-upstream"


def default_command() -> tuple[list[str], dict[str, str]]:
    """The `keygate` script if on PATH, else `python -m keygate` on this checkout's src/."""
    script = shutil.which("keygate")
    if script:
        return [script], {}
    src = REPO_ROOT / "src"
    pythonpath = os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH", "")]))
    return [sys.executable, "-m", "keygate"], {"PYTHONPATH": pythonpath}


def deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """`extra` merged into a copy of `base`; nested mappings merge, anything else replaces."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@dataclass
class Keygate:
    """One keygate setup (store, pepper, access log in `tmp`), served against any upstream URL."""

    tmp: Path
    command: Sequence[str]
    command_env: Mapping[str, str]
    extra_config: Mapping[str, Any]

    def env(self) -> dict[str, str]:
        env = {**os.environ, **self.command_env, "OPENAI_API_KEY": UPSTREAM_KEY}
        env.pop("KEYGATE_PEPPER", None)  # keygate then keeps a generated pepper file next to the db
        return env

    def write_config(self, name: str, port: int, upstream_base_url: str) -> Path:
        config: dict[str, Any] = {
            "listen": f"127.0.0.1:{port}",
            "admin_listen": f"127.0.0.1:{free_port()}",  # several instances may run side by side
            "database_url": f"sqlite:///{self.tmp / 'keygate.db'}",
            "access_log": str(self.tmp / "access.log"),
            "upstreams": {"openai": {"base_url": upstream_base_url, "api_key": "${OPENAI_API_KEY}"}},
        }
        path = self.tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump(deep_merge(config, self.extra_config), sort_keys=False))
        return path

    def create_client_key(self, upstream_base_url: str) -> str:
        """Create a client key with the CLI; returns the key (never printed)."""
        config = self.write_config("keygate-keys", free_port(), upstream_base_url)
        cmd = [*self.command, "--config", str(config), "keys", "create", "--name", "bench", "--json"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=self.env(), timeout=60, check=False)
        if proc.returncode != 0:
            raise HarnessError(
                f"`{' '.join(cmd)}` failed ({proc.returncode}):\n{proc.stderr.strip()[-2000:]}"
            )
        key = _key_from_output(proc.stdout)
        if key is None:
            raise HarnessError(f'`{" ".join(cmd)}` printed no JSON object with a "key"')
        return key

    @contextmanager
    def serve(self, name: str, upstream_base_url: str) -> Iterator[tuple[ManagedProcess, int]]:
        """Run `keygate serve` until the block exits; yields the process and its port."""
        port = free_port()
        config = self.write_config(name, port, upstream_base_url)
        process = ManagedProcess(
            f"keygate ({name})",
            [*self.command, "--config", str(config), "serve"],
            self.tmp / f"{name}.log",
            env=self.env(),
        )
        try:
            process.wait_for_port(port, timeout=10.0)
            yield process, port
        finally:
            process.stop()


def _key_from_output(stdout: str) -> str | None:
    """The "key" of the first JSON object in stdout (pretty-printed or not, log lines around it)."""
    decoder = json.JSONDecoder()
    start = stdout.find("{")
    while start != -1:
        try:
            record, _ = decoder.raw_decode(stdout, start)
        except ValueError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("key"), str):
            return record["key"]
        start = stdout.find("{", start + 1)
    return None


def load_extra_config(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise HarnessError(f"cannot read --keygate-config-extra {path}: {error}") from None
    if not isinstance(data, dict):
        raise HarnessError(f"{path} must hold a YAML mapping")
    return data
