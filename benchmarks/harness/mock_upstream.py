"""The mock OpenAI upstream: one nginx (1 worker) returning canned bodies from memory.

Two server blocks, because the path has to be /v1/chat/completions in both cases:
`json_port` answers chat completions with a JSON body, `stream_port` with an SSE body.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from harness import canned
from harness.procs import HarnessError, ManagedProcess, free_port

_TEMP_PATH_MODULES = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


@dataclass(frozen=True)
class MockUpstream:
    json_port: int
    stream_port: int
    process: ManagedProcess

    @property
    def json_base_url(self) -> str:
        return f"http://127.0.0.1:{self.json_port}/v1"

    @property
    def stream_base_url(self) -> str:
        return f"http://127.0.0.1:{self.stream_port}/v1"


def _quote(body: str) -> str:
    """Quote a body for an nginx `return` string (no variables: `$` would be interpolated)."""
    if "$" in body:
        raise ValueError("canned bodies must not contain '$'")
    escaped = body.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
    return f"'{escaped}'"


def _temp_paths(nginx: str, tmp: Path) -> str:
    """Point every compiled-in temp path into tmp, so nginx needs nothing from /var/lib/nginx."""
    build = subprocess.run([nginx, "-V"], capture_output=True, text=True, check=False).stderr
    lines = []
    for module in _TEMP_PATH_MODULES:
        if f"--http-{module.replace('_', '-')}-temp-path" in build:
            lines.append(f"    {module}_temp_path {tmp / module};")
    return "\n".join(lines)


def _server(port: int, chat_body: str, chat_type: str) -> str:
    sse = chat_type == "text/event-stream"
    extra_header = "\n            add_header Cache-Control no-cache;" if sse else ""
    return f"""
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /v1/chat/completions {{
            default_type {chat_type};{extra_header}
            return 200 {_quote(chat_body)};
        }}
        location = /v1/models {{
            return 200 {_quote(canned.models())};
        }}
        location = /v1/embeddings {{
            return 200 {_quote(canned.embeddings())};
        }}
        location / {{
            return 404 {_quote(canned.not_found())};
        }}
    }}"""


def render_config(nginx: str, tmp: Path, json_port: int, stream_port: int) -> str:
    return f"""daemon off;
master_process on;
worker_processes 1;
pid {tmp / "nginx.pid"};
error_log {tmp / "nginx-error.log"} warn;
events {{
    worker_connections 4096;
    multi_accept on;
}}
http {{
    access_log off;
    server_tokens off;
    default_type application/json;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    tcp_nodelay on;
    client_body_buffer_size 64k;
{_temp_paths(nginx, tmp)}
{_server(json_port, canned.chat_completion(), "application/json")}
{_server(stream_port, canned.chat_completion_stream(), "text/event-stream")}
}}
"""


@contextmanager
def start_mock_upstream(nginx: str, tmp: Path) -> Iterator[MockUpstream]:
    """Run nginx with a generated config in tmp; stop it on exit."""
    json_port, stream_port = free_port(), free_port()
    while stream_port == json_port:
        stream_port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(render_config(nginx, tmp, json_port, stream_port))
    check = subprocess.run(
        [nginx, "-t", "-q", "-p", str(tmp), "-e", str(tmp / "nginx-error.log"), "-c", str(conf)],
        capture_output=True,
        text=True,
        check=False,
    )
    if check.returncode != 0:
        raise HarnessError(f"nginx rejected {conf}:\n{check.stderr.strip()}")
    process = ManagedProcess(
        "nginx",
        [nginx, "-p", str(tmp), "-e", str(tmp / "nginx-error.log"), "-c", str(conf)],
        tmp / "nginx-stdout.log",
    )
    try:
        process.wait_for_port(json_port)
        process.wait_for_port(stream_port)
        yield MockUpstream(json_port, stream_port, process)
    finally:
        process.stop()
