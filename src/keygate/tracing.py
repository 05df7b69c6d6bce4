"""OpenTelemetry traces: one span per request, a child span per upstream attempt.

Off unless the ``OTEL_*`` variables turn it on (``observe_config.parse_tracing``); then
:class:`Tracing` owns its own ``TracerProvider`` (never the process-global one) with a
``BatchSpanProcessor`` and the OTLP/HTTP exporter: ending a span puts it in a bounded queue that
a background thread exports, so a slow or absent collector never holds up a request (a full queue
drops spans). While tracing is off the app holds no ``Tracing`` at all and ``ctx.span`` stays
None: the request path pays one ``is None`` test in the app and one in the forwarder.

Spans follow the OpenTelemetry GenAI and HTTP semantic conventions (``gen_ai.operation.name``,
``gen_ai.provider.name``, ``gen_ai.request.model``, ``gen_ai.response.model``,
``gen_ai.usage.*``, ``error.type``, ``server.address``, ``http.*``). A client's W3C
``traceparent`` makes the request span its child; it is never forwarded upstream (``headers.py``
never forwards trace headers). Prompt and completion text is recorded only with
``tracing.capture_content``, and then masked of anything secret-shaped.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any, Final
from urllib.parse import urlsplit

import orjson
import requests
from opentelemetry.context import Context as OtelContext
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace import sampling as samplers
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, StatusCode, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from . import __version__
from .config import Settings, Upstream
from .context import Context
from .logs import redact
from .observe_config import TracingSettings
from .outcomes import outcome
from .secret_scan import mask, scan

log = logging.getLogger("keygate.tracing")

# The GenAI operation of each route that has one (other routes' spans carry only HTTP attributes).
OPERATIONS: Final = {
    "chat.completions": "chat",
    "responses": "chat",
    "completions": "text_completion",
    "embeddings": "embeddings",
}
MAX_CONTENT: Final = 16 * 1024  # characters of captured prompt or completion text per attribute
_MODEL: Final = re.compile(rb'"model"\s*:\s*"([^"\\]{1,200})"')
_PROPAGATOR: Final = TraceContextTextMapPropagator()


def _sampler(settings: TracingSettings) -> samplers.Sampler:
    ratio = samplers.TraceIdRatioBased(settings.sampler_ratio)
    return {
        "always_on": samplers.ALWAYS_ON,
        "always_off": samplers.ALWAYS_OFF,
        "traceidratio": ratio,
        "parentbased_always_on": samplers.ParentBased(samplers.ALWAYS_ON),
        "parentbased_always_off": samplers.ParentBased(samplers.ALWAYS_OFF),
        "parentbased_traceidratio": samplers.ParentBased(ratio),
    }[settings.sampler]


def _session() -> requests.Session:
    """The exporter's HTTP session, under keygate's outbound rules: no proxy or CA settings from
    the environment, no redirects (TLS is verified: the exporter passes ``verify``)."""
    session = requests.Session()
    session.trust_env = False
    session.max_redirects = 0
    return session


def _content(value: Any) -> str:
    """Prompt or completion data as JSON text, masked of secrets and cut to :data:`MAX_CONTENT`."""
    text = orjson.dumps(value).decode() if not isinstance(value, str) else value
    text = redact(mask(text, scan(text, secrets=True, pii=False)))
    return text[:MAX_CONTENT]


class Tracing:
    """The tracer provider, its exporter, and the request spans they make."""

    def __init__(self, settings: Settings, exporter: Any = None) -> None:
        tracing = settings.tracing
        self.capture = tracing.capture_content
        attributes: dict[str, str] = dict(tracing.resource)
        attributes.update({"service.name": tracing.service_name, "service.version": __version__})
        self._provider = TracerProvider(resource=Resource(attributes), sampler=_sampler(tracing))
        if exporter is None:
            exporter = OTLPSpanExporter(
                endpoint=tracing.endpoint,
                certificate_file=tracing.certificate,
                client_certificate_file=tracing.client_certificate,
                client_key_file=tracing.client_key,
                headers={k: v.reveal() for k, v in tracing.headers},
                timeout=tracing.timeout,
                compression=Compression.NoCompression,
                session=_session(),
            )
        self._provider.add_span_processor(
            BatchSpanProcessor(
                exporter,
                max_queue_size=tracing.max_queue_size,
                schedule_delay_millis=tracing.schedule_delay * 1000.0,
                max_export_batch_size=min(512, tracing.max_queue_size),
            )
        )
        self._tracer = self._provider.get_tracer("keygate", __version__)
        self._listen = settings.listen
        self._origins: dict[str, tuple[str, int, str]] = {}  # base URL: host, port, scheme://netloc

    def origin(self, base_url: str) -> tuple[str, int, str]:
        found = self._origins.get(base_url)
        if found is None:
            parts = urlsplit(base_url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            found = self._origins[base_url] = (parts.hostname or "", port, f"{parts.scheme}://{parts.netloc}")
        return found

    def start(self, ctx: Context) -> None:
        """Open the request's span, as the child of the client's ``traceparent`` if it sent one."""
        parent = _PROPAGATOR.extract(ctx.headers) if "traceparent" in ctx.headers else None
        span = self._tracer.start_span(
            "keygate request",
            context=parent,
            kind=SpanKind.SERVER,
            start_time=int(ctx.ts * 1e9),
            attributes={
                "http.request.method": ctx.method,
                "server.address": self._listen.host,
                "server.port": self._listen.port,
                "keygate.request_id": ctx.request_id,
            },
        )
        if span.is_recording():  # a request the sampler left out costs nothing more
            ctx.span = RequestSpan(self, span, ctx)

    def shutdown(self) -> None:
        """Export what is queued (bounded by the exporter's timeout) and stop the export thread."""
        try:
            self._provider.shutdown()
        except Exception:  # an exporter failing at shutdown must not stop the gateway stopping
            log.exception("trace export at shutdown failed")


class RequestSpan:
    """One request's server span, its current upstream span, and what the answer said."""

    __slots__ = ("client", "ctx", "parent", "response_model", "server", "tracing")

    def __init__(self, tracing: Tracing, server: Span, ctx: Context) -> None:
        self.tracing = tracing
        self.server = server
        self.ctx = ctx
        self.parent: OtelContext = set_span_in_context(server)
        self.client: Span | None = None
        self.response_model: str | None = None

    def _at(self, perf: float) -> int:
        """A perf_counter reading of this request as nanoseconds since the epoch."""
        return int((self.ctx.ts + (perf - self.ctx.started)) * 1e9)

    # -- the upstream attempts (forward.py) ---------------------------------------------------

    def attempt(self, upstream: Upstream, key_id: str, method: str, target: str) -> None:
        """An attempt on one upstream key begins (the previous one, if any, was answered)."""
        self._end_client()
        host, port, origin = self.tracing.origin(upstream.base_url)
        op = OPERATIONS.get(self.ctx.route.name if self.ctx.route is not None else "")
        model = redact(self.ctx.model) if self.ctx.model else None
        name = f"{op} {model}" if op and model else f"{method} {upstream.name}"
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "server.address": host,
            "server.port": port,
            "url.full": origin + target.split("?", 1)[0],
            "gen_ai.provider.name": "openai",
            "keygate.upstream": upstream.name,
            "keygate.upstream_key_id": key_id,
        }
        if op:
            attributes["gen_ai.operation.name"] = op
        if model:
            attributes["gen_ai.request.model"] = model
        self.client = self.tracing._tracer.start_span(
            name, context=self.parent, kind=SpanKind.CLIENT, attributes=attributes
        )

    def answered(self, status: int, done: bool) -> None:
        """The attempt's answer began (``done``: and was read whole)."""
        span = self.client
        if span is None:
            return
        span.set_attribute("http.response.status_code", status)
        if status >= 400:
            span.set_attribute("error.type", str(status))
            span.set_status(StatusCode.ERROR)
        if done:
            self._end_client()

    def failed(self, error_type: str) -> None:
        """The attempt's connection failed or timed out."""
        span = self.client
        if span is not None:
            span.set_attribute("error.type", error_type)
            span.set_status(StatusCode.ERROR)
            self._end_client()

    def _end_client(self, at: float = 0.0) -> None:
        if self.client is not None:
            self.client.end(self._at(at) if at else None)
            self.client = None

    # -- the answer (app.py) ------------------------------------------------------------------

    def body(self, body: bytes) -> None:
        """A whole JSON answer: its model (and, when content is captured, its output)."""
        found = _MODEL.search(body[:4096])
        if found is not None:
            self.response_model = found.group(1).decode(errors="replace")
        if self.tracing.capture:
            try:
                data = orjson.loads(body)
            except orjson.JSONDecodeError:
                return
            if isinstance(data, dict):
                output = data.get("choices", data.get("output"))
                if output is not None:
                    self.server.set_attribute("gen_ai.output.messages", _content(output))

    def chunk(self, data: bytes) -> None:
        """The first piece of a stream: its model."""
        found = _MODEL.search(data[:4096])
        if found is not None:
            self.response_model = found.group(1).decode(errors="replace")

    def end(self) -> None:
        """Close the spans with what the request came to (called after the chain's complete)."""
        ctx, span = self.ctx, self.server
        self._end_client(ctx.upstream_ended)
        route = ctx.route
        op = OPERATIONS.get(route.name) if route is not None else None
        model = redact(ctx.model) if ctx.model else None
        attributes: dict[str, Any] = {
            "url.path": ctx.path,
            "client.address": ctx.client_ip,  # (after the client-IP guard: trusted proxies applied)
            "http.response.status_code": ctx.status,
            "keygate.outcome": outcome(
                ctx.status, ctx.error.code if ctx.error is not None else None, ctx.upstream_started != 0.0
            ),
        }
        if route is not None:
            attributes["keygate.route"] = route.name
        if ctx.key is not None:
            attributes["keygate.key_id"] = ctx.key.id
        if op is not None:
            attributes["gen_ai.operation.name"] = op
            attributes["gen_ai.provider.name"] = "openai"
        if model:
            attributes["gen_ai.request.model"] = model
        if self.response_model:
            attributes["gen_ai.response.model"] = redact(self.response_model)
        if ctx.upstream is not None:
            attributes["keygate.upstream"] = ctx.upstream.name
        usage = ctx.usage
        if usage.reported or usage.estimated:
            attributes["gen_ai.usage.input_tokens"] = usage.prompt_tokens
            attributes["gen_ai.usage.output_tokens"] = usage.completion_tokens
            if usage.estimated:
                attributes["keygate.usage.estimated"] = True
        if ctx.stream:
            attributes["keygate.stream"] = True
        if self.tracing.capture and ctx.json is not None:
            prompt = ctx.json.get("messages", ctx.json.get("input", ctx.json.get("prompt")))
            if prompt is not None:
                attributes["gen_ai.input.messages"] = _content(prompt)
        error = ctx.error
        if error is not None:
            attributes["error.type"] = error.code or type(error).__name__
        elif ctx.status >= 400:
            attributes["error.type"] = str(ctx.status)
        span.set_attributes(attributes)
        if ctx.status >= 500 or ctx.status == 0:
            span.set_status(StatusCode.ERROR)
        span.update_name(
            f"{op} {model}" if op and model else f"{ctx.method} {route.name if route else 'unmatched'}"
        )
        span.end(time.time_ns())
