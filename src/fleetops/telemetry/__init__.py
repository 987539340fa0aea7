"""Telemetry used by every subsystem: structured logs, the metric catalogue, metric sets."""

from . import _catalog as catalog
from ._logs import EventLogger as EventLogger
from ._logs import JsonFormatter as JsonFormatter
from ._logs import configure_json_logging as configure_json_logging
from ._logs import get_logger as get_logger
from ._metricset import MetricSet as MetricSet
from ._tracing import SpanBuffer as SpanBuffer
from ._tracing import new_traceparent as new_traceparent

__all__ = ["catalog"]
