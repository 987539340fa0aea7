"""Structured logs with stable event names.

``log = get_logger("fleetops.worker"); log.info("lease.lost", task_id=7)`` writes one
JSON object per line: ``{"ts": ..., "level": "info", "logger": ..., "event":
"lease.lost", "task_id": 7}``. People and the alert engine key on ``event``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from opentelemetry import trace

from ._tracing import task_context


class EventLogger:
    """A thin wrapper that turns keyword fields into structured log records."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def _log(self, level: int, event: str, fields: dict[str, Any]) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, event, extra={"fleetops": fields})

    def log(self, level: int, event: str, **fields: Any) -> None:
        self._log(level, event, fields)

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, fields)


def get_logger(name: str) -> EventLogger:
    return EventLogger(logging.getLogger(name))


class JsonFormatter(logging.Formatter):
    """One JSON object per record, with the record's structured fields inlined."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        task = task_context.get()
        if task:
            out.update(task)
        span = trace.get_current_span()
        ctx = span.get_span_context()
        if ctx.is_valid:
            out["trace_id"] = f"{ctx.trace_id:032x}"
            out["span_id"] = f"{ctx.span_id:016x}"
        fields = getattr(record, "fleetops", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


def configure_json_logging(level: int = logging.INFO, stream: Any = None) -> None:
    """Send fleetops logs to ``stream`` (stderr by default) as JSON lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("fleetops")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    logging.Formatter.converter = time.gmtime


#: A log file past this size is renamed ``<name>.1`` (replacing the last one) and a
#: new file begins: a process's logs take at most about twice this on disk.
LOG_MAX_BYTES = 64 * 1024 * 1024
#: How often a worker looks at its log file's size.
LOG_CHECK_SECONDS = 5.0


def rotated(path: Path) -> Path:
    """The one older generation of the log file ``path``."""
    return path.with_name(path.name + ".1")


class StderrRotator:
    """Keeps the log file that this process's stderr writes to under ``max_bytes``.

    A worker's stderr is a file the supervisor opened for it, so no logging handler
    of the worker's can rename it. Past ``max_bytes`` :meth:`check` renames the file
    to ``<name>.1``, opens a new one at ``path`` and puts it on file descriptor 2:
    log records, tracebacks and anything else written to stderr go there from then.
    """

    def __init__(self, path: Path, max_bytes: int = LOG_MAX_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes

    def check(self) -> bool:
        """Rotate if the file is past its size; answers whether it was."""
        if os.fstat(2).st_size < self.max_bytes:
            return False
        rotate(self.path)  # whatever stderr still buffers goes to the older one
        stderr_to(self.path)
        return True


def rotate(path: Path) -> None:
    """Make the log file ``path`` its older generation (a process that holds it open
    goes on writing there; the next to open ``path`` starts a new file). A file gone
    (deleted by hand) needs nothing."""
    with contextlib.suppress(FileNotFoundError):
        os.replace(path, rotated(path))


def stderr_to(path: Path) -> None:
    """Put the file ``path`` (appended to, made if missing) on file descriptor 2: log
    records, tracebacks and anything else this process writes to stderr go there."""
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.dup2(fd, 2)
    finally:
        os.close(fd)
