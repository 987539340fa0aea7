"""Searching the fleet's JSON logs (the embedded default keeps them as files).

Every process of a fleet writes one JSON object per line to its own file under
``.fleetops/logs/``: the control plane to ``control.log``, each worker to
``<worker id>.log``. A file past 64 MiB becomes ``<name>.1`` (replacing the last one)
and a new one begins. :func:`search_logs` reads them newest first with filters;
:func:`follow_logs` yields new matching lines as they are written; :func:`prune_logs`
deletes the files of workers long gone (each worker start writes a file of its own).

Not every line is a record. Python prints a traceback it cannot hand to a logger (an
interpreter's fatal error, faulthandler's dump of the threads), and agent code may
print. Each run of such lines is one record of event ``output`` with the lines in
``output`` (the last :data:`OUTPUT_CHARS` of them): at level ``error`` when it holds a
traceback, a fatal error or a dump of the threads, else ``info``; stamped with the
time of the record before it in its file, or for a run before any record with that of
the record after it, and for a run nothing follows (the last thing written) with the
time of the file's last write (following, the time it was read); in the cluster every
record of its file names, if they all name one. Searches and filters find it like
any other record. Following, a run at the end of what was read waits for what
follows it, up to :data:`HOLD_SECONDS` (a traceback is written a few lines at a
time); one still waiting when its file is rotated is read from the older generation.
A line still being written is left for later: a record by a search, any line by a
follower, which begins after the last whole line.
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
#: How much of such a run a record keeps: its end (a traceback ends with the error).
OUTPUT_CHARS = 16_384
#: How a run of plain lines says it is an error: Python's own words for a traceback
#: (an exception group's too), a fatal error, and faulthandler's dump of the threads.
_ERROR_MARKS = (
    "Traceback (most recent call last):",
    "Fatal Python error:",
    "most recent call first",
)


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
    if lines and not data.endswith(b"\n") and lines[-1].lstrip().startswith("{"):
        lines = lines[:-1]  # a record being written: the next search reads it whole
    return lines[1:] if size > TAIL_BYTES else lines


def _before(path: Path, offset: int, most: int = 64 * 1024) -> list[str]:
    """The whole lines of up to ``most`` bytes of ``path`` before ``offset``."""
    try:
        data = _read_from(path, max(0, offset - most), offset)
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
    text = "\n".join(block)
    if len(text) > OUTPUT_CHARS:
        text = f"[{len(text) - OUTPUT_CHARS:,} characters cut]\n{text[-OUTPUT_CHARS:]}"
    error = any(mark in line for line in block for mark in _ERROR_MARKS)
    record: dict[str, Any] = {
        "ts": ts,
        "level": "error" if error else "info",
        "event": OUTPUT_EVENT,
        "output": text,
        "source": source,
    }
    if cluster is not None:
        record["cluster"] = cluster
    return record


def _cluster_of(records: Iterable[dict[str, Any] | None]) -> str | None:
    """The cluster every record that names one names, if they all name the same."""
    return _only(_named_clusters(records))


def _named_clusters(records: Iterable[dict[str, Any] | None]) -> set[str]:
    named = (r.get("cluster") for r in records if r is not None)
    return {c for c in named if isinstance(c, str) and c}


def _only(clusters: set[str]) -> str | None:
    return next(iter(clusters)) if len(clusters) == 1 else None


def _last_ts(records: Sequence[dict[str, Any] | None], default: float | None) -> float | None:
    """The time of the last of ``records`` that has one, else ``default``."""
    stamps = (_ts(r) for r in reversed(records) if r is not None)
    return next((ts for ts in stamps if ts is not None), default)


def _records(
    lines: Sequence[str],
    source: str,
    last_write: float,
    parsed: Sequence[dict[str, Any] | None] | None = None,
    cluster: str | None = None,
    before: float | None = None,
) -> Iterator[tuple[dict[str, Any], str]]:
    """The records of one file's ``lines`` (``parsed`` already, where given), each with
    the text filters match it on; runs of lines that are not records folded into
    ``output`` records (see the module doc), in ``cluster`` (where not given: the
    one the records of ``lines`` name), ``before`` the time of the record before
    them where the lines are not the file's first."""
    if parsed is None:
        parsed = [_parse(line, source) for line in lines]
        cluster = _cluster_of(parsed)
    block: list[str] = []
    for line, record in zip(lines, parsed, strict=True):
        if record is None:
            if block or line.strip():  # blank lines inside a run are part of it
                block.append(line)
            continue
        ts = _ts(record)
        if block:
            stamp = before if before is not None else ts
            folded = _output(_trimmed(block), source, stamp or last_write, cluster)
            yield folded, folded["output"]
            block = []
        before = ts if ts is not None else before
        yield record, line
    if block:  # the last thing written: when the file was
        folded = _output(_trimmed(block), source, last_write, cluster)
        yield folded, folded["output"]


def _trimmed(block: list[str]) -> list[str]:
    end = len(block)
    while end and not block[end - 1].strip():
        end -= 1
    return block[:end]


def _ts(record: dict[str, Any]) -> float | None:
    try:
        return float(record["ts"])
    except (KeyError, TypeError, ValueError):
        return None


def search_logs(log_dir: Path, where: LogFilter, limit: int = 200) -> list[dict[str, Any]]:
    """Matching records from every log file, newest first, at most ``limit``."""
    # (ts, 1 for a current file and 0 for its older generation, line, record): newest
    # first, and of one worker's records at the same time, the later line first
    found: list[tuple[float, int, int, dict[str, Any]]] = []
    if not log_dir.is_dir():
        return []
    for path in [*log_dir.glob("*.log"), *log_dir.glob("*.log.1")]:
        try:
            lines = _lines(path)
            last_write = path.stat().st_mtime
        except FileNotFoundError:  # pruned meanwhile (prune_logs)
            continue
        source = path.name.removesuffix(".1").removesuffix(".log")
        current = int(path.suffix == ".log")
        for k, (record, text) in enumerate(_records(lines, source, last_write)):
            if where.matches(record, text):
                found.append((_ts(record) or 0.0, current, k, record))
    found.sort(key=lambda f: f[:3], reverse=True)
    return [record for *_, record in found[:limit]]


def follow_logs(
    log_dir: Path, where: LogFilter, *, poll: float = 0.25, stop_after: float | None = None
) -> Iterator[dict[str, Any]]:
    """Yield matching records appended to any log file from now on."""
    tails = {path: _Tail(path) for path in log_dir.glob("*.log")}
    began = time.monotonic()
    while stop_after is None or time.monotonic() - began < stop_after:
        for path in sorted(log_dir.glob("*.log")):
            if path not in tails:  # a file that began meanwhile: from its start
                tails[path] = _Tail(path, 0)
            for record, text in tails[path].read():
                if where.matches(record, text):
                    yield record
        time.sleep(poll)


#: How long following holds a run of plain lines at the end of what it read, for the
#: rest of it, while the file grows (see :meth:`_Tail.read`).
HOLD_SECONDS = 1.0


class _Tail:
    """What one log file gains, read a poll at a time (see :func:`follow_logs`)."""

    def __init__(self, path: Path, offset: int | None = None) -> None:
        self.path = path
        if offset is None:  # from the end of its last whole line
            try:
                offset = path.stat().st_size
            except FileNotFoundError:  # pruned meanwhile (prune_logs)
                offset = 0
            offset -= len(_partial_line(path, offset))
        self.offset = offset
        #: the clusters its records name, and the time of its last record read: from
        #: the end of what it wrote before, read once it writes more (a follower of a
        #: fleet with hundreds of files reads only those that change)
        self.clusters: set[str] = set()
        self.last_ts: float | None = None
        self.looked_back = offset == 0
        #: since when, and at what size of the file, a run of plain lines at the end of
        #: what was read waits for the rest of it
        self.held: tuple[float, int] | None = None

    def _look_back(self, path: Path) -> None:
        earlier = [_parse(line, "") for line in _before(path, self.offset)]
        self.clusters = _named_clusters(earlier)
        self.last_ts = _last_ts(earlier, None)
        self.looked_back = True

    def read(self) -> list[tuple[dict[str, Any], str]]:
        """The records written since the last read, each with the text filters match
        it on. A run of plain lines at the end waits for what follows it: a record,
        or a read that finds the file as it was, or :data:`HOLD_SECONDS` (a traceback
        is written a few lines at a time; a progress bar, line after line)."""
        found: list[tuple[dict[str, Any], str]] = []
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:  # pruned meanwhile (prune_logs)
            return found
        if size != self.offset and not self.looked_back:
            self._look_back(self.path if size > self.offset else rotated(self.path))
        if size < self.offset:  # rotated: the rest of the old file, then the new one
            with contextlib.suppress(FileNotFoundError):
                found = self._take(_read_from(rotated(self.path), self.offset), final=True)
            self.offset, self.held = 0, None
        if size == self.offset:
            return found
        try:
            chunk = _read_from(self.path, self.offset, size)
        except FileNotFoundError:
            return found
        return found + self._take(chunk, size=size)

    def _take(
        self, chunk: bytes, size: int = 0, final: bool = False
    ) -> list[tuple[dict[str, Any], str]]:
        raw = chunk[: chunk.rfind(b"\n") + 1].split(b"\n")[:-1]
        lines = [line.decode("utf-8", errors="replace").removesuffix("\r") for line in raw]
        parsed = [_parse(line, self.path.stem) for line in lines]
        tail = len(lines)
        while tail and parsed[tail - 1] is None:
            tail -= 1
        now = time.monotonic()
        since, at = self.held or (now, -1)
        if tail < len(lines) and not final and at != size and now - since < HOLD_SECONDS:
            self.held = (since, size)
            lines, parsed, raw = lines[:tail], parsed[:tail], raw[:tail]
        else:
            self.held = None
        self.offset += sum(len(line) + 1 for line in raw)
        self.clusters |= _named_clusters(parsed)
        found = list(
            _records(lines, self.path.stem, time.time(), parsed, _only(self.clusters), self.last_ts)
        )
        self.last_ts = _last_ts(parsed, self.last_ts)
        return found


def _read_from(path: Path, offset: int, end: int | None = None) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(offset)
        return handle.read() if end is None else handle.read(end - offset)


def _partial_line(path: Path, size: int) -> bytes:
    """What of ``path``'s last line, up to ``size``, is still being written."""
    for most in (4096, 64 * 1024):
        try:
            data = _read_from(path, max(0, size - most), size)
        except FileNotFoundError:
            return b""
        if b"\n" in data or size <= most:
            break
    return data[data.rfind(b"\n") + 1 :]


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
