"""The ``metrics`` and ``tracing`` settings sections, and the reading of the standard ``OTEL_*``
variables into them.

Metrics are always collected (off the request path, see ``metrics.py``); these settings say who
may scrape them without a token and how many label values they may have. Tracing is off unless the
OpenTelemetry environment variables turn it on, as every OpenTelemetry SDK reads them; keygate
reads them here, once (``config.py`` hands this module the environment), and passes every value
to the exporter explicitly, so nothing else looks at the environment.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote

from . import schema
from .errors import ConfigError
from .schema import setting
from .types import Secret

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_OTLP_ENDPOINT: Final = "http://localhost:4318"
SAMPLERS: Final = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)


def _models(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(m, str) and 0 < len(m) <= 200 for m in value):
        raise ConfigError(f"{where}: expected a list of model names")
    return tuple(value)


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """``metrics:`` in the config file."""

    # Networks whose clients may GET /metrics on the admin listener without a token (a scraper
    # on a private network). Empty by default: every scrape needs a token of the metrics (or
    # admin) role.
    scrape_without_token_from: tuple[Network, ...] = setting((), schema.networks)
    # A key_id label on the per-request metrics (one series per key and label set: only for a
    # gateway with few keys).
    per_key_labels: bool = setting(False, schema.flag)
    # Model names the model label may show besides the price table's (anything else is "other").
    models: tuple[str, ...] = setting((), _models)


@dataclass(frozen=True, slots=True)
class _TracingFile:
    """``tracing:`` in the config file: what the OTEL_* variables do not say."""

    # Prompt and completion text on the spans (masked of anything secret-shaped). Off by default;
    # OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true turns it on too.
    capture_content: bool = setting(False, schema.flag)
    # Plain http to a collector that is not on this machine.
    allow_insecure: bool = setting(False, schema.flag)


@dataclass(frozen=True, slots=True)
class TracingSettings:
    """OpenTelemetry tracing, from ``OTEL_*`` variables and ``tracing:``; off unless enabled."""

    enabled: bool = False
    endpoint: str = DEFAULT_OTLP_ENDPOINT + "/v1/traces"
    headers: tuple[tuple[str, Secret], ...] = ()  # may carry a collector's credentials
    timeout: float = 10.0
    service_name: str = "keygate"
    sampler: str = "parentbased_always_on"
    sampler_ratio: float = 1.0
    capture_content: bool = False
    resource: tuple[tuple[str, str], ...] = field(default=())
    certificate: str | None = None  # CA bundle for the collector's TLS (else the system's)
    client_certificate: str | None = None  # mTLS to the collector: certificate and key files
    client_key: str | None = None
    schedule_delay: float = 5.0  # seconds between exports (OTEL_BSP_SCHEDULE_DELAY, in ms)
    max_queue_size: int = 2048  # spans queued for export; beyond it, new spans are dropped


def _flag(env: Mapping[str, str], name: str) -> bool:
    value = env.get(name, "").strip().lower()
    if value in ("", "false"):
        return False
    if value == "true":
        return True
    raise ConfigError(f"{name}: expected true or false, got {value[:40]!r}")


def _pairs(text: str, name: str) -> list[tuple[str, str]]:
    """``k=v,k2=v2`` (values percent-encoded), as the OTEL_*_HEADERS and RESOURCE_ATTRIBUTES are."""
    out = []
    for item in text.split(","):
        if not item.strip():
            continue
        k, sep, v = item.partition("=")
        if not sep or not k.strip():
            raise ConfigError(f"{name}: expected key=value pairs separated by commas")
        out.append((unquote(k.strip()), unquote(v.strip())))
    return out


def parse_tracing(raw: object, env: Mapping[str, str]) -> TracingSettings:
    """The tracing settings: ``tracing:`` from the file, the rest from the ``OTEL_*`` variables.

    Tracing is on when ``OTEL_TRACES_EXPORTER`` is ``otlp``, or unset while an OTLP endpoint
    variable is set; ``none`` (or ``OTEL_SDK_DISABLED=true``) keeps it off. Only OTLP over HTTP
    with protobuf is supported.
    """
    spec = schema.build(_TracingFile, raw if raw is not None else {}, "tracing")
    capture = spec.capture_content or _flag(env, "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT")
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    traces_endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if exporter not in ("", "otlp", "none"):
        raise ConfigError(f"OTEL_TRACES_EXPORTER: only otlp or none are supported, got {exporter[:40]!r}")
    enabled = exporter == "otlp" or (exporter == "" and bool(traces_endpoint or endpoint))
    if _flag(env, "OTEL_SDK_DISABLED") or not enabled:
        return TracingSettings(capture_content=capture)
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = env.get(name, "").strip()
        if protocol:
            if protocol != "http/protobuf":
                raise ConfigError(f"{name}: only http/protobuf is supported, got {protocol[:40]!r}")
            break
    if traces_endpoint:
        where, url = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", traces_endpoint
    else:  # the signal path is appended to the base endpoint
        where, url = (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            (endpoint or DEFAULT_OTLP_ENDPOINT).rstrip("/") + "/v1/traces",
        )
    url = schema.url(url, where, insecure_ok=spec.allow_insecure)
    header_var = (
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS"
        if env.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS")
        else "OTEL_EXPORTER_OTLP_HEADERS"
    )
    headers = tuple((k.lower(), Secret(v)) for k, v in _pairs(env.get(header_var, ""), header_var))
    timeout_var = (
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"
        if env.get("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
        else "OTEL_EXPORTER_OTLP_TIMEOUT"
    )
    timeout = 10.0
    if env.get(timeout_var):
        timeout = _number(env[timeout_var], timeout_var, maximum=600_000) / 1000.0  # milliseconds
    sampler = env.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    if sampler not in SAMPLERS:
        raise ConfigError(f"OTEL_TRACES_SAMPLER: expected one of {', '.join(SAMPLERS)}, got {sampler[:40]!r}")
    ratio = 1.0
    if sampler.endswith("traceidratio") and env.get("OTEL_TRACES_SAMPLER_ARG"):
        ratio = _number(env["OTEL_TRACES_SAMPLER_ARG"], "OTEL_TRACES_SAMPLER_ARG", maximum=1, zero=True)
    delay = 5.0
    if env.get("OTEL_BSP_SCHEDULE_DELAY"):
        delay = _number(env["OTEL_BSP_SCHEDULE_DELAY"], "OTEL_BSP_SCHEDULE_DELAY", maximum=3_600_000) / 1000.0
    queue = 2048
    if env.get("OTEL_BSP_MAX_QUEUE_SIZE"):
        queue = int(_number(env["OTEL_BSP_MAX_QUEUE_SIZE"], "OTEL_BSP_MAX_QUEUE_SIZE", maximum=1_000_000))
    files: dict[str, str | None] = {}
    for what in ("CERTIFICATE", "CLIENT_CERTIFICATE", "CLIENT_KEY"):
        name = f"OTEL_EXPORTER_OTLP_TRACES_{what}"
        name = name if env.get(name) else f"OTEL_EXPORTER_OTLP_{what}"
        value = env.get(name, "").strip() or None
        if value is not None and not Path(value).is_file():
            raise ConfigError(f"{name}: {value} is not a readable file")
        files[what] = value
    if (files["CLIENT_CERTIFICATE"] is None) != (files["CLIENT_KEY"] is None):
        raise ConfigError(
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY go together"
        )
    resource = _pairs(env.get("OTEL_RESOURCE_ATTRIBUTES", ""), "OTEL_RESOURCE_ATTRIBUTES")
    service = env.get("OTEL_SERVICE_NAME", "").strip() or dict(resource).get("service.name") or "keygate"
    return TracingSettings(
        enabled=True,
        endpoint=url,
        headers=headers,
        timeout=timeout,
        service_name=service,
        sampler=sampler,
        sampler_ratio=ratio,
        capture_content=capture,
        resource=tuple(resource),
        certificate=files["CERTIFICATE"],
        client_certificate=files["CLIENT_CERTIFICATE"],
        client_key=files["CLIENT_KEY"],
        schedule_delay=delay,
        max_queue_size=queue,
    )


def _number(text: str, where: str, *, maximum: float, zero: bool = False) -> float:
    try:
        value: Any = float(text.strip())
    except ValueError:
        raise ConfigError(f"{where}: expected a number, got {text[:40]!r}") from None
    found: float = schema.number(value, where, zero=zero, maximum=maximum)
    return found
