"""Searching the fleet's JSON logs (the embedded default keeps them as files).

Every process of a fleet writes one JSON object per line to its own file under
``.fleetops/logs/``: the control plane to ``control.log``, each worker to
``<worker id>.log``. A file past 64 MiB becomes ``<name>.1`` (replacing the last one)
and a new one begins. :func:`search_logs` reads them newest first with filters;
:func:`follow_logs` yields new matching lines as they are written; :func:`prune_logs`
deletes the files of workers long gone (each worker start writes a file of its own).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._exceptions import ConfigError
from ._logs import rotated

LEVELS = ("debug", "info", "warning", "error", "critical")
#: The control plane's own log file (never pruned: it is open for as long as it runs).
CONTROL_LOG = "control.log"
#: What the supervisor's warm spares write before one is taken (a worker's own log
#: takes over then); kept however long it goes unwritten, as the spares hold it open.
SPARES_LOG = "spares.log"
#: How much of each file's end a search reads (old lines beyond it are not searched).
TAIL_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class LogFilter:
    text: str | None = None
    level: str | None = None
    task_id: int | None = None
    cluster: str | None = None
    trace_id: str | None = None
    event: str | None = None

    def __post_init__(self) -> None:
        if self.level is not None and self.level not in LEVELS:
            raise ConfigError("level", self.level, f"use one of {', '.join(LEVELS)}")

    def matches(self, record: dict[str, Any], line: str) -> bool:
        if self.level is not None:
            level = str(record.get("level", "info"))
            if level not in LEVELS or LEVELS.index(level) < LEVELS.index(self.level):
                return False
        if self.task_id is not None and record.get("task_id") != self.task_id:
            return False
        if self.cluster is not None and record.get("cluster") != self.cluster:
            return False
        if self.trace_id is not None and record.get("trace_id") != self.trace_id:
            return False
        if self.event is not None and not str(record.get("event", "")).startswith(self.event):
            return False
        return self.text is None or self.text.lower() in line.lower()


def _lines(path: Path) -> list[str]:
    with open(path, "rb") as handle:
        handle.seek(0, 2)
        size = handle.tell()
        handle.seek(max(0, size - TAIL_BYTES))
        data = handle.read()
    lines = data.decode("utf-8", errors="replace").splitlines()
    return lines[1:] if size > TAIL_BYTES else lines


def _parse(line: str, source: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    record.setdefault("source", source)
    return record


def search_logs(log_dir: Path, where: LogFilter, limit: int = 200) -> list[dict[str, Any]]:
    """Matching records from every log file, newest first, at most ``limit``."""
    found: list[dict[str, Any]] = []
    if not log_dir.is_dir():
        return found
    for path in [*log_dir.glob("*.log"), *log_dir.glob("*.log.1")]:
        try:
            lines = _lines(path)
        except FileNotFoundError:  # pruned meanwhile (prune_logs)
            continue
        source = path.name.removesuffix(".1").removesuffix(".log")
        for line in lines:
            record = _parse(line, source)
            if record is not None and where.matches(record, line):
                found.append(record)
    found.sort(key=lambda r: float(r.get("ts", 0)), reverse=True)
    return found[:limit]


def follow_logs(
    log_dir: Path, where: LogFilter, *, poll: float = 0.25, stop_after: float | None = None
) -> Iterator[dict[str, Any]]:
    """Yield matching records appended to any log file from now on."""
    offsets: dict[Path, int] = {}
    for path in log_dir.glob("*.log"):
        with contextlib.suppress(FileNotFoundError):  # pruned meanwhile (prune_logs)
            offsets[path] = path.stat().st_size
    began = time.monotonic()
    while stop_after is None or time.monotonic() - began < stop_after:
        for path in sorted(log_dir.glob("*.log")):
            start = offsets.get(path, 0)
            try:
                size = path.stat().st_size
                if size < start:
                    start = 0  # rotated: a new file, to be read from its beginning
                elif size == start:
                    continue
                with open(path, "rb") as handle:
                    handle.seek(start)
                    chunk = handle.read(size - start)
            except FileNotFoundError:  # pruned meanwhile (prune_logs)
                offsets.pop(path, None)
                continue
            complete = chunk.rfind(b"\n") + 1
            offsets[path] = start + complete
            for line in chunk[:complete].decode("utf-8", errors="replace").splitlines():
                record = _parse(line, path.stem)
                if record is not None and where.matches(record, line):
                    yield record
        time.sleep(poll)


def prune_logs(log_dir: Path, before: float, keep: Collection[str] = ()) -> list[str]:
    """Delete the worker log files last written before ``before`` (seconds since the
    epoch), but the control plane's and those of the workers in ``keep`` (the live
    ones: an idle worker may write nothing for a day). Answers the workers whose logs
    went. Without this a fleet keeps a file per worker start, and every search reads
    the end of each."""
    gone: list[str] = []
    if not log_dir.is_dir():
        return gone
    for path in log_dir.glob("*.log"):
        if path.name in (CONTROL_LOG, SPARES_LOG) or path.stem in keep:
            continue
        try:
            if path.stat().st_mtime >= before:
                continue
            os.unlink(path)
        except FileNotFoundError:  # deleted meanwhile
            continue
        gone.append(path.stem)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(rotated(path))
    return sorted(gone)
