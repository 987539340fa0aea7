"""Searching the fleet's JSON logs (the embedded default keeps them as files).

Every process of a fleet writes one JSON object per line to its own file under
``.fleetops/logs/``: the control plane to ``control.log``, each worker to
``<worker id>.log``. A file past 64 MiB becomes ``<name>.1`` (replacing the last one)
and a new one begins. :func:`search_logs` reads them newest first with filters;
:func:`follow_logs` yields new matching lines as they are written; :func:`prune_logs`
deletes the files of workers long gone (each worker start writes a file of its own).

Not every line is a record. Python prints a traceback it cannot hand to a logger (an
interpreter's fatal error, faulthandler's dump of a hung process), and agent code may
print. Each run of such lines is one record of event ``output`` with the lines in
``output``: at level ``error`` when it holds a traceback or a fatal error, else
``info``; stamped with the time of the record before it in its file (else of the one
after it, else of the file's last write); in the cluster every record of its file
names, if they all name one. Searches and filters find it like any other record.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
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
#: The event of a record made of lines that are not JSON records (see the module doc).
OUTPUT_EVENT = "output"
#: How a run of plain lines says it is an error: Python's own words for one.
_ERROR_MARKS = ("Traceback (most recent call last):", "Fatal Python error:")


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


def _before(path: Path, offset: int, most: int = 64 * 1024) -> list[str]:
    """The whole lines of up to ``most`` bytes of ``path`` before ``offset``."""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, offset - most))
            data = handle.read(min(offset, most))
    except FileNotFoundError:
        return []
    lines = data.decode("utf-8", errors="replace").splitlines()
    return lines[1:] if offset > most else lines


def _parse(line: str, source: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    record.setdefault("source", source)
    return record


def _output(block: list[str], source: str, ts: float, cluster: str | None) -> dict[str, Any]:
    """The record of a run of lines that are not records (see the module doc)."""
    error = any(line.lstrip().startswith(_ERROR_MARKS) for line in block)
    record: dict[str, Any] = {
        "ts": ts,
        "level": "error" if error else "info",
        "event": OUTPUT_EVENT,
        "output": "\n".join(block),
        "source": source,
    }
    if cluster is not None:
        record["cluster"] = cluster
    return record


def _cluster_of(records: Iterable[dict[str, Any] | None]) -> str | None:
    """The cluster every record that names one names, if they all name the same."""
    clusters = {r["cluster"] for r in records if r is not None and r.get("cluster")}
    return str(next(iter(clusters))) if len(clusters) == 1 else None


def _records(
    lines: Sequence[str], source: str, last_write: float, cluster: str | None = None
) -> Iterator[tuple[dict[str, Any], str]]:
    """The records of one file's ``lines``, each with the text filters match it on;
    runs of lines that are not records folded into ``output`` records, in
    ``cluster`` (else the one the records of ``lines`` name)."""
    parsed = [_parse(line, source) for line in lines]
    cluster = cluster or _cluster_of(parsed)
    times = [_ts(r) if r is not None else None for r in parsed]
    before: float | None = None
    block: list[str] = []
    for k, (line, record) in enumerate(zip(lines, parsed, strict=True)):
        if record is None:
            if line.strip():
                block.append(line)
            if block and (k + 1 == len(lines) or parsed[k + 1] is not None):
                after = next((t for t in times[k + 1 :] if t is not None), None)
                stamp = before if before is not None else after
                folded = _output(block, source, last_write if stamp is None else stamp, cluster)
                yield folded, folded["output"]
                block = []
            continue
        before = times[k] if times[k] is not None else before
        yield record, line


def _ts(record: dict[str, Any]) -> float | None:
    try:
        return float(record["ts"])
    except (KeyError, TypeError, ValueError):
        return None


def search_logs(log_dir: Path, where: LogFilter, limit: int = 200) -> list[dict[str, Any]]:
    """Matching records from every log file, newest first, at most ``limit``."""
    found: list[dict[str, Any]] = []
    if not log_dir.is_dir():
        return found
    for path in [*log_dir.glob("*.log"), *log_dir.glob("*.log.1")]:
        try:
            lines = _lines(path)
            last_write = path.stat().st_mtime
        except FileNotFoundError:  # pruned meanwhile (prune_logs)
            continue
        source = path.name.removesuffix(".1").removesuffix(".log")
        for record, text in _records(lines, source, last_write):
            if where.matches(record, text):
                found.append(record)
    # newest first; of a file's records at the same time, the later line first (the
    # sort keeps the order of equal ones, so they go in backwards)
    found.reverse()
    found.sort(key=lambda r: float(r.get("ts", 0)), reverse=True)
    return found[:limit]


def follow_logs(
    log_dir: Path, where: LogFilter, *, poll: float = 0.25, stop_after: float | None = None
) -> Iterator[dict[str, Any]]:
    """Yield matching records appended to any log file from now on."""
    offsets: dict[Path, int] = {}
    clusters: dict[Path, str | None] = {}  # by what each file wrote before
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
            lines = chunk[:complete].decode("utf-8", errors="replace").splitlines()
            if path not in clusters:
                clusters[path] = _cluster_of(_parse(line, "") for line in _before(path, start))
            cluster = clusters[path] or _cluster_of(_parse(line, "") for line in lines)
            for record, text in _records(lines, path.stem, time.time(), cluster):
                if where.matches(record, text):
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
