"""Telemetry used by every subsystem: structured logs (metrics and traces come later)."""

from ._logs import EventLogger as EventLogger
from ._logs import JsonFormatter as JsonFormatter
from ._logs import configure_json_logging as configure_json_logging
from ._logs import get_logger as get_logger
