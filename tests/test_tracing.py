"""OpenTelemetry traces (``keygate.tracing``): a real gateway, turned on by the standard OTEL_*
variables, exports OTLP/HTTP protobuf to a receiver started here, which decodes it with
opentelemetry-proto: the request span with the GenAI attributes, its upstream child, the client's
traceparent as parent, nothing forwarded upstream, no prompt text unless content capture is on."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from keygate.config import load_settings
from keygate.context import Context
from keygate.errors import ConfigError
from keygate.server import build
from keygate.testing import MockUpstream
from keygate.tracing import Tracing

from .helpers import UPSTREAM_SECRET, Gateway

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
PROMPT = "tell me a secret story about the moon"


class Receiver:
    """An OTLP/HTTP trace receiver: POST /v1/traces, protobuf bodies, decoded as they arrive."""

    def __init__(self) -> None:
        self.spans: list[tuple[dict[str, Any], Span]] = []  # (resource attributes, span)
        self.paths: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.paths.append(self.path)
                receiver.headers.append({k.lower(): v for k, v in self.headers.items()})
                request = ExportTraceServiceRequest.FromString(body)
                with receiver.arrived:
                    for rs in request.resource_spans:
                        resource = attributes(rs.resource.attributes)
                        for ss in rs.scope_spans:
                            receiver.spans.extend((resource, s) for s in ss.spans)
                    receiver.arrived.notify_all()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def wait(self, predicate: Any, timeout: float = 10.0) -> list[Span]:
        deadline = time.monotonic() + timeout
        with self.arrived:
            while True:
                found = [s for _, s in self.spans if predicate(s)]
                if found or time.monotonic() > deadline:
                    return found
                self.arrived.wait(0.1)


def attributes(kvs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in kvs:
        v = kv.value
        out[kv.key] = getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None
    return out


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    yield r
    r.server.shutdown()
    r.server.server_close()


def otel_env(receiver: Receiver) -> dict[str, str]:
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_EXPORTER_OTLP_HEADERS": "x-collector-token=tok%3Dsecret",
        "OTEL_SERVICE_NAME": "keygate-under-test",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }


def test_request_and_upstream_spans(
    receiver: Receiver, upstream: MockUpstream, mock: MockUpstream, tmp_path: Path
) -> None:
    # The operator even lists traceparent as an extra header: it is still never forwarded.
    extra = {"extra_request_headers": ["traceparent", "tracestate", "x-app-tag"]}
    with Gateway(tmp_path, upstream.url, env=otel_env(receiver), extra=extra) as gw:
        key = gw.create_key("traced")
        client = openai.OpenAI(base_url=gw.url, api_key=key["key"], max_retries=0)
        answer = client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": PROMPT}],
            extra_headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "tracestate": "vendor=x"},
        )
        assert answer.usage is not None
        stream = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        assert list(stream)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=gw.url, api_key="kg_" + "y" * 40, max_retries=0).models.list()
        seen = [r.headers for r in mock.requests]
        assert seen and all("traceparent" not in h and "tracestate" not in h for h in seen)

        servers = receiver.wait(lambda s: s.kind == Span.SPAN_KIND_SERVER and s.trace_id.hex() == TRACE_ID)
        assert len(servers) == 1
        server = servers[0]
        assert server.parent_span_id.hex() == PARENT_ID  # the client's span is its parent
        assert server.name == "chat gpt-4o"
        attrs = attributes(server.attributes)
        assert attrs["gen_ai.operation.name"] == "chat"
        assert attrs["gen_ai.provider.name"] == "openai"
        assert attrs["gen_ai.request.model"] == "gpt-4o"
        assert attrs["gen_ai.response.model"] == answer.model
        assert attrs["gen_ai.usage.input_tokens"] == answer.usage.prompt_tokens
        assert attrs["gen_ai.usage.output_tokens"] == answer.usage.completion_tokens
        assert attrs["http.response.status_code"] == 200
        assert attrs["server.address"] == "127.0.0.1" and attrs["client.address"] == "127.0.0.1"
        assert attrs["keygate.key_id"] == key["id"]
        assert attrs["keygate.outcome"] == "allowed"
        assert "error.type" not in attrs
        children = receiver.wait(lambda s: s.parent_span_id == server.span_id)
        assert len(children) == 1
        child = children[0]
        assert child.kind == Span.SPAN_KIND_CLIENT and child.trace_id == server.trace_id
        assert server.start_time_unix_nano <= child.start_time_unix_nano <= child.end_time_unix_nano
        assert child.end_time_unix_nano <= server.end_time_unix_nano
        cattrs = attributes(child.attributes)
        assert cattrs["server.address"] == "127.0.0.1" and cattrs["server.port"] == upstream.port
        assert cattrs["http.response.status_code"] == 200
        assert cattrs["gen_ai.request.model"] == "gpt-4o"
        assert cattrs["keygate.upstream_key_id"] == "openai#0"

        streamed = receiver.wait(lambda s: s.name == "chat gpt-4o-mini" and s.kind == Span.SPAN_KIND_SERVER)
        assert len(streamed) == 1 and attributes(streamed[0].attributes)["keygate.stream"] is True
        assert attributes(streamed[0].attributes)["gen_ai.usage.output_tokens"] > 0
        assert not streamed[0].parent_span_id  # no traceparent: a root span, a new trace
        failed = receiver.wait(lambda s: attributes(s.attributes).get("error.type") == "invalid_api_key")
        assert len(failed) == 1
        assert attributes(failed[0].attributes)["keygate.outcome"] == "auth_failed"
        assert attributes(failed[0].attributes)["http.response.status_code"] == 401

    assert set(receiver.paths) == {"/v1/traces"}
    assert receiver.headers[0]["x-collector-token"] == "tok=secret"  # OTEL_EXPORTER_OTLP_HEADERS
    resource = receiver.spans[0][0]
    assert resource["service.name"] == "keygate-under-test"
    # No prompt or completion text, and no secret, in any span.
    dump = b"".join(s.SerializeToString() for _, s in receiver.spans)
    assert PROMPT.encode() not in dump
    assert answer.choices[0].message.content and answer.choices[0].message.content.encode() not in dump
    for secret in (key["key"], UPSTREAM_SECRET):
        assert secret.encode() not in dump


def test_content_capture_is_opt_in_and_masked(
    receiver: Receiver, upstream: MockUpstream, tmp_path: Path
) -> None:
    fake_secret = "sk-proj-" + "Q7x" * 16
    # The prompt scan only logs secrets here, so the prompt reaches the span to be masked there.
    extra = {"tracing": {"capture_content": True}, "prompt_scan": {"secrets": "log"}}
    with Gateway(tmp_path, upstream.url, env=otel_env(receiver), extra=extra) as gw:
        key = gw.create_key("captured")
        client = openai.OpenAI(base_url=gw.url, api_key=key["key"], max_retries=0)
        client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": f"{PROMPT} with {fake_secret}"}]
        )
        spans = receiver.wait(lambda s: s.kind == Span.SPAN_KIND_SERVER)
    attrs = attributes(spans[0].attributes)
    assert PROMPT in attrs["gen_ai.input.messages"]
    assert fake_secret not in attrs["gen_ai.input.messages"]
    assert "[REDACTED:" in attrs["gen_ai.input.messages"]
    assert "gen_ai.output.messages" in attrs
    dump = b"".join(s.SerializeToString() for _, s in receiver.spans)
    for secret in (fake_secret, key["key"], UPSTREAM_SECRET):
        assert secret.encode() not in dump


def test_tracing_is_off_unless_the_otel_variables_say_so(tmp_path: Path) -> None:
    cfg = tmp_path / "k.yaml"
    cfg.write_text("{}")
    base = {"OPENAI_API_KEY": "sk-x"}
    assert not load_settings(cfg, base).tracing.enabled
    # Off: no tracer is built at all, so requests carry no span (ctx.span stays None).
    parts = build(load_settings(cfg, base))
    assert parts.tracing is None and parts.gateway.tracing is None
    parts.store.close()
    parts = build(load_settings(cfg, {**base, "OTEL_TRACES_EXPORTER": "otlp"}))
    assert isinstance(parts.gateway.tracing, Tracing)
    parts.gateway.tracing.shutdown()
    parts.store.close()
    # A request the sampler leaves out gets no span object either.
    unsampled = Tracing(
        load_settings(cfg, {**base, "OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "always_off"})
    )
    ctx = Context("kg-1", "GET", "/v1/models", "", {}, "127.0.0.1")
    unsampled.start(ctx)
    assert ctx.span is None
    unsampled.shutdown()
    assert not load_settings(
        cfg, {**base, "OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"}
    ).tracing.enabled
    assert not load_settings(
        cfg, {**base, "OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}
    ).tracing.enabled
    on = load_settings(
        cfg, {**base, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://localhost:9999/custom"}
    ).tracing
    assert on.enabled and on.endpoint == "http://localhost:9999/custom" and on.service_name == "keygate"
    default = load_settings(
        cfg,
        {
            **base,
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_TRACES_SAMPLER": "traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.25",
        },
    ).tracing
    assert default.endpoint == "http://localhost:4318/v1/traces" and default.sampler_ratio == 0.25
    assert "tok" not in repr(
        load_settings(
            cfg, {**base, "OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_HEADERS": "a=tok"}
        ).tracing
    )
    for env, where in (
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector.example:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TIMEOUT": "soon"},
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ),
        ({"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "maybe"}, "CAPTURE_MESSAGE_CONTENT"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_CERTIFICATE": "/nonexistent.pem"},
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
        ),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_CLIENT_KEY": str(cfg)}, "go together"),
    ):
        with pytest.raises(ConfigError, match=where):
            load_settings(cfg, {**base, **env})
    ca = load_settings(
        cfg, {**base, "OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE": str(cfg)}
    )
    assert ca.tracing.certificate == str(cfg)  # handed to the exporter, which verifies with it
    # Plain http to a collector elsewhere only when the file says so.
    cfg.write_text("tracing: {allow_insecure: true}")
    remote = load_settings(cfg, {**base, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector.example:4318"})
    assert remote.tracing.endpoint == "http://collector.example:4318/v1/traces"


def test_a_retried_attempt_is_a_span_of_its_own(
    receiver: Receiver, upstream: MockUpstream, mock: MockUpstream, tmp_path: Path
) -> None:
    keys = {
        "upstreams": {
            "openai": {"base_url": upstream.url, "api_keys": ["${OPENAI_API_KEY}", "${SECOND_KEY}"]}
        }
    }
    env = {**otel_env(receiver), "SECOND_KEY": UPSTREAM_SECRET}
    with Gateway(tmp_path, upstream.url, env=env, extra=keys) as gw:
        client = openai.OpenAI(base_url=gw.url, api_key=gw.create_key("retried")["key"], max_retries=0)
        mock.fail_next("500")
        assert client.models.list().data
        servers = receiver.wait(lambda s: s.kind == Span.SPAN_KIND_SERVER)
        attempts = receiver.wait(
            lambda s: s.parent_span_id == servers[0].span_id and len(receiver.spans) >= 3
        )
    assert len(servers) == 1 and servers[0].name == "GET models"
    assert len(attempts) == 2
    first, second = sorted(attempts, key=lambda s: s.start_time_unix_nano)
    assert attributes(first.attributes)["error.type"] == "500"
    assert attributes(first.attributes)["http.response.status_code"] == 500
    assert first.status.code == first.status.STATUS_CODE_ERROR
    assert attributes(second.attributes)["http.response.status_code"] == 200
    assert "error.type" not in attributes(second.attributes)
    assert {attributes(a.attributes)["keygate.upstream_key_id"] for a in attempts} == {"openai#0", "openai#1"}
    assert attributes(servers[0].attributes)["http.response.status_code"] == 200
