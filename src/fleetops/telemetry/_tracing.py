"""Traces with the OpenTelemetry GenAI conventions, carried inside tasks.

Every attempt of a task runs in an ``invoke_agent {agent}`` span; an LLM call is a
``chat {model}`` span and a tool run an ``execute_tool {tool}`` span, each with the
``gen_ai.*`` attributes. A task carries its W3C ``traceparent`` in its headers: it is
set when the task is submitted and handed on to every child task, so one trace
follows a request across clusters and worker processes, and a redelivered attempt
joins the same trace.

Finished spans go to the built-in span store (through :class:`SpanBuffer`, flushed by
the worker with its other writes) and, when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set, to
any OpenTelemetry collector over OTLP/HTTP as well.
"""

from __future__ import annotations

import contextvars
import json
import os
import secrets
from collections import deque
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanContext, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

TRACEPARENT = "traceparent"
_propagator = TraceContextTextMapPropagator()

#: The task, agent and cluster that the code running now works for (logs read it).
task_context: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar(
    "fleetops_task_context", default=None
)


def new_traceparent() -> str:
    """A fresh W3C traceparent for a task that starts a trace (sampled)."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def context_from_headers(headers: Mapping[str, Any]) -> Any:
    """The OpenTelemetry context a task's headers carry (None if none).

    Parses the W3C ``traceparent`` directly: this runs for every task, and the
    generic propagator costs several times more.
    """
    value = headers.get(TRACEPARENT)
    if not isinstance(value, str) or len(value) != 55:
        return None
    version, trace_id, span_id, flags = value.split("-")
    try:
        ctx = SpanContext(
            int(trace_id, 16),
            int(span_id, 16),
            is_remote=True,
            trace_flags=TraceFlags(int(flags, 16)),
        )
    except ValueError:
        return None
    if not ctx.is_valid or version == "ff":
        return None
    return trace.set_span_in_context(trace.NonRecordingSpan(ctx))


def current_traceparent() -> str | None:
    """The traceparent of the current span, to hand to a child task."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get(TRACEPARENT)


def ids_of(span: Span) -> tuple[str, str]:
    ctx: SpanContext = span.get_span_context()
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"


class SpanBuffer(SpanProcessor):
    """Keeps finished spans until the worker writes them to the store.

    Bounded: past ``limit`` the oldest are dropped and counted, so a store outage
    cannot grow a worker's memory without end.
    """

    def __init__(self, limit: int = 20_000) -> None:
        self._spans: deque[tuple[Any, ...]] = deque(maxlen=limit)
        self.dropped = 0

    def on_end(self, span: ReadableSpan) -> None:
        self.add(span_row(span))

    def add(self, row: tuple[Any, ...]) -> None:
        """Keep one finished span (its attributes as a dict or as JSON text).

        Attributes are encoded here, as each span ends, not all at once when the
        buffer is drained: a drain of thousands of spans would stall the event loop.
        """
        if not isinstance(row[11], str):
            row = (*row[:11], _encode(row[11]))
        if len(self._spans) == self._spans.maxlen:
            self.dropped += 1
        self._spans.append(row)

    def drain(self) -> list[tuple[Any, ...]]:
        """Every kept span as a store row (attributes encoded as JSON), oldest first."""
        rows = list(self._spans)
        self._spans.clear()
        return rows

    def requeue(self, rows: list[tuple[Any, ...]]) -> None:
        """Put rows that could not be written back in front of the newer ones."""
        room = (self._spans.maxlen or 0) - len(self._spans)
        kept = rows[-room:] if room > 0 else []
        self.dropped += len(rows) - len(kept)
        self._spans.extendleft(reversed(kept))

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def span_row(span: ReadableSpan) -> tuple[Any, ...]:
    """A span as the store keeps it."""
    ctx = span.context
    assert ctx is not None
    attributes = dict(span.attributes or {})
    task_id = attributes.get("fleetops.task.id")
    parent = span.parent
    return (
        f"{ctx.trace_id:032x}",
        f"{ctx.span_id:016x}",
        f"{parent.span_id:016x}" if parent is not None else None,
        span.name,
        span.kind.name.lower(),
        (span.start_time or 0) / 1e9,
        (span.end_time or span.start_time or 0) / 1e9,
        span.status.status_code.name.lower(),
        int(task_id) if isinstance(task_id, int | str) and str(task_id).isdigit() else None,
        attributes.get("fleetops.cluster"),
        attributes.get("gen_ai.agent.name"),
        _encode(attributes),
    )


def _encode(attributes: Mapping[str, Any]) -> str:
    return json.dumps(attributes, separators=(",", ":"), default=list)


def make_tracer(
    service: str, attributes: Mapping[str, str], *, otlp_endpoint: str | None = None
) -> tuple[trace.Tracer, SpanBuffer, TracerProvider | None]:
    """A tracer feeding a :class:`SpanBuffer`: the lean one when spans go only to the
    built-in store, the SDK's (exporting to the store and over OTLP) when an OTLP
    endpoint is set. Answers (tracer, buffer, the SDK provider to shut down or None)."""
    buffer = SpanBuffer()
    if not otlp_endpoint:
        from ._lean import LeanTracer

        return LeanTracer(buffer), buffer, None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    resource = Resource.create({"service.name": service, **attributes})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(buffer)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint)))
    return provider.get_tracer("fleetops"), buffer, provider


def otlp_endpoint_from_env(environ: Mapping[str, str] = os.environ) -> str | None:
    """The OTLP/HTTP traces URL the standard OpenTelemetry variables name, if any."""
    traces = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if traces:
        return traces
    base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    return f"{base.rstrip('/')}/v1/traces" if base else None


def remote_parent(trace_id: str, span_id: str) -> Any:
    """A context whose parent is the given remote span (for tests and replays)."""
    ctx = SpanContext(
        int(trace_id, 16),
        int(span_id, 16),
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    return trace.set_span_in_context(trace.NonRecordingSpan(ctx))
