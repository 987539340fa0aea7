"""A lean span recorder behind the OpenTelemetry API, for the built-in span store.

The OpenTelemetry SDK costs some 35 µs per span (attribute validation, locks,
processor fan-out); a worker starting thousands of tasks a second spends a fifth of
its time there. When no collector is configured, spans only go to the built-in store,
so fleetops records them with this tracer instead: the same API (``trace.use_span``,
``get_current_span``, context propagation and log correlation all work unchanged),
the same rows in the store, at a fraction of the cost. With
``OTEL_EXPORTER_OTLP_ENDPOINT`` set, the SDK is used, exporting to both.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.trace import (
    Link,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.util.types import Attributes, AttributeValue

from ._tracing import KIND_NAMES, parse_traceparent

if TYPE_CHECKING:
    from opentelemetry.context import Context

    from ._tracing import SpanBuffer

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)


class LeanSpan(trace.Span):
    __slots__ = (
        "_name",
        "_ctx",
        "_parent",
        "_kind",
        "_attributes",
        "_start",
        "_end",
        "_status",
        "_buffer",
    )

    def __init__(
        self,
        name: str,
        ctx: SpanContext,
        parent: int | None,
        kind: SpanKind,
        attributes: dict[str, AttributeValue],
        buffer: SpanBuffer,
    ) -> None:
        self._name = name
        self._ctx = ctx
        self._parent = parent
        self._kind = kind
        self._attributes = attributes  # the span's own: callers hand over a fresh dict
        self._start = time.time()
        self._end: float | None = None
        self._status = "unset"
        self._buffer = buffer

    def get_span_context(self) -> SpanContext:
        return self._ctx

    def is_recording(self) -> bool:
        return self._end is None

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        self._attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        self._attributes.update(attributes)

    def add_event(
        self, name: str, attributes: Attributes = None, timestamp: int | None = None
    ) -> None:
        pass  # events are not kept by the built-in store

    def add_link(self, context: SpanContext, attributes: Attributes = None) -> None:
        pass

    def update_name(self, name: str) -> None:
        self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        code = status.status_code if isinstance(status, Status) else status
        self._status = code.name.lower()

    def record_exception(
        self,
        exception: BaseException,
        attributes: Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        self._attributes["exception.type"] = type(exception).__name__
        self._attributes["exception.message"] = str(exception)
        if attributes:
            self._attributes.update(attributes)

    def end(self, end_time: int | None = None) -> None:
        if self._end is not None:
            return
        self._end = end_time / 1e9 if end_time is not None else time.time()
        attributes = self._attributes
        task_id = attributes.get("fleetops.task.id")
        cluster = attributes.get("fleetops.cluster")
        agent = attributes.get("gen_ai.agent.name")
        # a raw row: ids as integers, attributes as a dict; the writer formats them
        # (telemetry._tracing.store_row), off the event loop. Only plain values: the
        # garbage collector then stops tracking the row, however many are waiting
        self._buffer.add(
            (
                self._ctx.trace_id,
                self._ctx.span_id,
                self._parent,
                self._name,
                KIND_NAMES[self._kind],
                self._start,
                self._end,
                self._status,
                task_id if isinstance(task_id, int) else None,
                cluster if isinstance(cluster, str) else None,
                agent if isinstance(agent, str) else None,
                attributes,
            )
        )


class _UnrecordedSpan(trace.NonRecordingSpan):
    """A span of a trace that is not recorded: it only carries the trace on, with the
    sampled flag off. Its context is made when first asked for (by a child span or a
    child task's traceparent); most such tasks never ask."""

    def __init__(self, trace_id: int | None, rng: random.Random) -> None:
        #: None: a new trace, its id drawn when first asked for
        self._trace_id = trace_id
        self._rng = rng
        self._made: SpanContext | None = None

    def get_span_context(self) -> SpanContext:
        if self._made is None:
            if self._trace_id is None:
                self._trace_id = self._rng.getrandbits(128) or 1
            span_id = self._rng.getrandbits(64) or 1
            self._made = SpanContext(self._trace_id, span_id, False, _NOT_SAMPLED)
        return self._made

    def __repr__(self) -> str:
        if self._trace_id is None:
            return "_UnrecordedSpan(a new trace, its id not drawn yet)"
        return f"_UnrecordedSpan(trace_id={self._trace_id:032x})"


class LeanTracer(trace.Tracer):
    """Creates :class:`LeanSpan` objects that end up in a :class:`SpanBuffer`.

    Sampling is decided per trace, where it starts (OpenTelemetry's ``ParentBased``):
    a span whose parent was recorded is recorded, one whose parent was not is not (a
    non-recording span still carries the trace on, with the sampled flag off), and
    at most ``roots_per_second`` new traces a second are recorded (None: every one).
    At thousands of tasks a second, writing a span for each would cost a fifth of a
    worker's throughput; every task is still counted in the metrics.
    """

    def __init__(self, buffer: SpanBuffer, roots_per_second: float | None = None) -> None:
        self._buffer = buffer
        self._bits = random.SystemRandom().getrandbits(64)
        self._rng = random.Random(self._bits)
        self._rate = roots_per_second
        self._tokens = max(1.0, roots_per_second or 0.0)
        self._refilled = time.monotonic()
        self.roots_recorded = 0
        self.roots_skipped = 0

    def _sample_root(self) -> bool:
        """Whether to record a new trace (a token bucket of ``roots_per_second``)."""
        if self._rate is None:
            self.roots_recorded += 1
            return True
        now = time.monotonic()
        self._tokens = min(max(1.0, self._rate), self._tokens + (now - self._refilled) * self._rate)
        self._refilled = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            self.roots_recorded += 1
            return True
        self.roots_skipped += 1
        return False

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace.Span:
        parent = trace.get_current_span(context).get_span_context()

        def kept() -> dict[str, AttributeValue]:
            return dict(attributes or {})  # the span's own copy

        if parent.is_valid:
            sampled = bool(parent.trace_flags.sampled)
            return self._start(name, kind, parent.trace_id, parent.span_id, sampled, kept)
        return self._start(name, kind, None, None, None, kept)

    def start_task_span(
        self,
        name: str,
        traceparent: object,
        attributes: Callable[[], dict[str, AttributeValue]],
    ) -> trace.Span:
        """:meth:`start_span` for a task: the parent is the W3C ``traceparent`` the task
        carries (or a new trace when it carries none or a bad one), read without
        building an OpenTelemetry context. ``attributes`` makes the span's attributes,
        called only when the span is recorded."""
        parsed = None if traceparent is None else parse_traceparent(traceparent)
        if parsed is None:
            return self._start(name, SpanKind.INTERNAL, None, None, None, attributes)
        trace_id, parent, flags = parsed
        return self._start(name, SpanKind.INTERNAL, trace_id, parent, bool(flags & 1), attributes)

    def _start(
        self,
        name: str,
        kind: SpanKind,
        trace_id: int | None,
        parent: int | None,
        sampled: bool | None,
        attributes: Callable[[], dict[str, AttributeValue]],
    ) -> trace.Span:
        """A span under ``parent`` of ``trace_id`` as its sampled flag says, or, with no
        trace yet, the first span of a new one if the root budget allows. The
        attributes are made only for a span that is recorded, and an unrecorded new
        trace draws its id only when asked for it."""
        if trace_id is None:
            if not self._sample_root():
                return _UnrecordedSpan(None, self._rng)
            trace_id = self._rng.getrandbits(128) or 1
        elif not sampled:
            return _UnrecordedSpan(trace_id, self._rng)
        ctx = SpanContext(trace_id, self._rng.getrandbits(64) or 1, False, _SAMPLED)
        return LeanSpan(name, ctx, parent, kind, attributes(), self._buffer)

    @contextmanager
    def start_as_current_span(  # type: ignore[override]
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[trace.Span]:
        span = self.start_span(name, context, kind, attributes)
        with trace.use_span(
            span,
            end_on_exit=end_on_exit,
            record_exception=record_exception,
            set_status_on_exception=set_status_on_exception,
        ) as current:
            yield current
