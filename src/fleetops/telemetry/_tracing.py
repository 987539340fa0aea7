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

import asyncio
import contextvars
import json
import os
import secrets
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanContext, SpanKind, TraceFlags
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


def parse_traceparent(value: object) -> tuple[int, int, int] | None:
    """(trace id, parent span id, flags) of a W3C ``traceparent``; None if it is not a
    valid one. Read directly: this runs for every task, and the generic propagator
    costs several times more."""
    if not isinstance(value, str) or len(value) != 55:
        return None
    if value[2] != "-" or value[35] != "-" or value[52] != "-" or value[:2] == "ff":
        return None
    try:
        trace_id, span_id = int(value[3:35], 16), int(value[36:52], 16)
        flags = int(value[53:], 16)
    except ValueError:
        return None
    if not trace_id or not span_id:
        return None
    return trace_id, span_id, flags


def context_from_headers(headers: Mapping[str, Any]) -> Any:
    """The OpenTelemetry context a task's headers carry (None if none)."""
    parsed = parse_traceparent(headers.get(TRACEPARENT))
    if parsed is None:
        return None
    trace_id, span_id, flags = parsed
    ctx = SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags))
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

    def __init__(self, limit: int = 20_000, flush_at: int = 5_000) -> None:
        self._spans: deque[tuple[Any, ...]] = deque(maxlen=limit)
        self.dropped = 0
        #: Set when ``flush_at`` spans are waiting: their writer should not wait for
        #: its next turn (at thousands of tasks a second the buffer fills in seconds).
        self.due = asyncio.Event()
        self._flush_at = flush_at

    def on_end(self, span: ReadableSpan) -> None:
        self.add(span_row(span))

    def add(self, row: tuple[Any, ...]) -> None:
        """Keep one finished span: a store row, or a raw one (see :func:`store_row`)."""
        if len(self._spans) == self._spans.maxlen:
            self.dropped += 1
        self._spans.append(row)
        if len(self._spans) == self._flush_at:
            self.due.set()

    def drain(self) -> list[tuple[Any, ...]]:
        """Every kept span, oldest first, as added: pass them through :func:`store_rows`
        (on the thread that writes them, not on the event loop: it costs microseconds
        a span)."""
        rows = list(self._spans)
        self._spans.clear()
        self.due.clear()
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


_ENCODER = json.JSONEncoder(separators=(",", ":"), default=list)
KIND_NAMES = {kind: kind.name.lower() for kind in SpanKind}


def store_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A span as the store keeps it, from the form a :class:`SpanBuffer` holds.

    The lean tracer adds raw rows, cheap to make when a span ends: trace, span and
    parent ids as integers, attributes as a dict. Here they become hex text and JSON.
    A store row (attributes already JSON text, as :func:`span_row` makes them) passes
    unchanged.
    """
    trace_id, span_id, parent, name, kind, start, end, status, task, cluster, agent, attrs = row
    if isinstance(attrs, str):
        return row
    return (
        f"{trace_id:032x}",
        f"{span_id:016x}",
        None if parent is None else f"{parent:016x}",
        name,
        kind if isinstance(kind, str) else KIND_NAMES[kind],
        start,
        end,
        status,
        task,
        cluster,
        agent,
        _ENCODER.encode(attrs),
    )


def store_rows(rows: Iterable[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
    """:func:`store_row` of each row, one at a time (for ``Store.put_spans``)."""
    return map(store_row, rows)


def _encode(attributes: Mapping[str, Any]) -> str:
    return _ENCODER.encode(attributes)


def make_tracer(
    service: str,
    attributes: Mapping[str, str],
    *,
    otlp_endpoint: str | None = None,
    roots_per_second: float | None = None,
) -> tuple[trace.Tracer, SpanBuffer, TracerProvider | None]:
    """A tracer feeding a :class:`SpanBuffer`: the lean one when spans go only to the
    built-in store (recording at most ``roots_per_second`` new traces a second, see
    :class:`LeanTracer`), the SDK's (exporting to the store and over OTLP, sampling as
    the standard ``OTEL_TRACES_SAMPLER`` variables say) when an OTLP endpoint is set.
    Answers (tracer, buffer, the SDK provider to shut down or None)."""
    buffer = SpanBuffer()
    if not otlp_endpoint:
        from ._lean import LeanTracer

        return LeanTracer(buffer, roots_per_second), buffer, None
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
