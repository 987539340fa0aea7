"""The fleet's log files: those of workers long gone are deleted, the rest kept."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fleetops.telemetry._logsearch import LogFilter, follow_logs, prune_logs, search_logs


def _log(log_dir: Path, name: str, age: float) -> Path:
    path = log_dir / f"{name}.log"
    path.write_text(f'{{"ts": {time.time() - age}, "level": "info", "event": "{name}"}}\n')
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def _followed(log_dir: Path, meanwhile: Callable[[], None]) -> list[str]:
    """The events follow_logs yields for 0.8 s while ``meanwhile`` runs on a thread."""
    writer = threading.Thread(target=meanwhile)
    writer.start()
    try:
        return [r["event"] for r in follow_logs(log_dir, LogFilter(), poll=0.02, stop_after=0.8)]
    finally:
        writer.join()


def test_prune_deletes_old_worker_logs_but_not_live_workers_or_the_control_plane(
    tmp_path: Path,
) -> None:
    day = 86400.0
    _log(tmp_path, "control", 3 * day)  # the control plane's own: never
    _log(tmp_path, "spares", 3 * day)  # the warm spares', open while they wait: never
    _log(tmp_path, "front-0-aaaa", 2 * day)  # gone long ago: deleted
    _log(tmp_path, "front-1-bbbb", 2 * day)  # idle for two days but alive: kept
    _log(tmp_path, "back-0-cccc", 60.0)  # gone a minute ago: kept for now
    _log(tmp_path, "front-0-aaaa.log", 2 * day)  # its older generation: goes with it
    _log(tmp_path, "back-0-cccc.log", 120.0)  # kept with its current file
    for older in ("front-0-aaaa.log.log", "back-0-cccc.log.log"):
        (tmp_path / older).rename(tmp_path / older.replace(".log.log", ".log.1"))
    (tmp_path / "notes.txt").write_text("not a log")  # not ours: untouched
    os.utime(tmp_path / "notes.txt", (0, 0))

    gone = prune_logs(tmp_path, time.time() - day, keep={"front-1-bbbb"})

    assert gone == ["front-0-aaaa"]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [
        "back-0-cccc.log",
        "back-0-cccc.log.1",
        "control.log",
        "front-1-bbbb.log",
        "notes.txt",
        "spares.log",
    ]
    found = {(r["event"], r["source"]) for r in search_logs(tmp_path, LogFilter())}
    assert found == {
        ("control", "control"),
        ("spares", "spares"),
        ("front-1-bbbb", "front-1-bbbb"),
        ("back-0-cccc", "back-0-cccc"),
        ("back-0-cccc.log", "back-0-cccc"),  # the older generation is searched too
    }
    assert prune_logs(tmp_path / "missing", time.time()) == []


def test_search_and_follow_go_on_when_a_listed_file_was_pruned_meanwhile(
    tmp_path: Path,
) -> None:
    kept = _log(tmp_path, "front-0-aaaa", 0)
    pruned = _log(tmp_path, "back-0-bbbb", 0)

    class ListedBeforePruning(type(tmp_path)):  # type: ignore[misc]
        """A directory whose listing was taken before prune_logs deleted a file."""

        def glob(self, pattern: str) -> Any:
            return iter([self / kept.name, self / pruned.name] if pattern == "*.log" else [])

    listed = ListedBeforePruning(tmp_path)
    pruned.unlink()
    assert [r["event"] for r in search_logs(listed, LogFilter())] == ["front-0-aaaa"]

    def meanwhile() -> None:
        time.sleep(0.2)
        with kept.open("a") as handle:
            handle.write(f'{{"ts": {time.time()}, "level": "info", "event": "later"}}\n')

    assert _followed(listed, meanwhile) == ["later"]  # only what was written after it began


def test_follow_reads_a_rotated_file_from_its_beginning(tmp_path: Path) -> None:
    """A worker past its log size starts a new file under the same name: following
    must read that one from its start, not from where the old one ended."""
    path = _log(tmp_path, "front-0-aaaa", 0)
    with path.open("a") as handle:
        handle.write("x" * 500 + "\n")

    def rotate() -> None:
        time.sleep(0.2)
        path.rename(path.with_name(path.name + ".1"))
        path.write_text(f'{{"ts": {time.time()}, "level": "info", "event": "after"}}\n')

    assert _followed(tmp_path, rotate) == ["after"]


def test_log_lines_print_their_fields_verbatim_and_a_traceback_under_the_line(
    monkeypatch: Any,
) -> None:
    import io

    from rich.console import Console

    from fleetops.cli import _fleet

    printed = io.StringIO()
    monkeypatch.setattr(_fleet, "out", Console(file=printed, width=300, color_system=None))
    error = "FileNotFoundError: [Errno 2] No such file or directory: '[/tmp/x]'"
    stack = 'Traceback (most recent call last):\n  File "agents.py", line 9, in refund\n' + error
    record = {"ts": time.time(), "level": "info", "event": "task.failed", "task_id": 7}
    _fleet._print_log({**record, "error": error, "traceback": stack}, json_output=False)
    line, *below = printed.getvalue().splitlines()
    assert line.endswith(f"task.failed task_id=7 error={error}")
    assert below == ["    " + text for text in stack.splitlines()]


TRACEBACK = """Traceback (most recent call last):
  File "agents.py", line 3, in <module>
    1 / 0
ZeroDivisionError: division by zero"""


def _record(ts: float, event: str, **fields: Any) -> str:
    return json.dumps({"ts": ts, "level": "info", "event": event, **fields})


def test_lines_that_are_not_records_are_found_as_one_output_record_a_run(
    tmp_path: Path,
) -> None:
    """A traceback Python printed by itself, or what agent code printed, is searched
    like a record: one for each run of such lines, dated by the record before it, in
    its file's cluster, at level error when Python says it is one."""
    t = time.time() - 60
    worker = tmp_path / "front-0-aaaa.log"
    worker.write_text(
        "\n".join(
            [
                _record(t, "worker.started", cluster="front"),
                TRACEBACK,
                _record(t + 2, "task.succeeded", cluster="front", task_id=4),
                "hello from an agent",
                "",
                "and its second line",
            ]
        )
        + "\n"
    )
    printed = tmp_path / "spares.log"  # nothing but a print: dated by the file's last write
    printed.write_text("loading the model\n")
    os.utime(printed, (t + 5, t + 5))

    found = search_logs(tmp_path, LogFilter())
    assert [(r["event"], r["source"], r["ts"]) for r in found] == [
        ("output", "spares", t + 5),
        ("output", "front-0-aaaa", t + 2),  # at the time of the record before it, and
        ("task.succeeded", "front-0-aaaa", t + 2),  # newest first: the later line first
        ("output", "front-0-aaaa", t),
        ("worker.started", "front-0-aaaa", t),
    ]
    crash = found[3]
    assert crash == {
        "ts": t,
        "level": "error",
        "event": "output",
        "output": TRACEBACK,
        "source": "front-0-aaaa",
        "cluster": "front",
    }
    assert found[1]["output"] == "hello from an agent\nand its second line"
    assert found[1]["level"] == "info" and "cluster" not in found[0]

    # the filters see them as records: text, level and cluster
    assert search_logs(tmp_path, LogFilter(text="zerodivision")) == [crash]
    assert search_logs(tmp_path, LogFilter(level="error")) == [crash]
    assert search_logs(tmp_path, LogFilter(cluster="front")) == found[1:]
    assert search_logs(tmp_path, LogFilter(task_id=4)) == [found[2]]

    def meanwhile() -> None:
        time.sleep(0.2)
        with worker.open("a") as handle:
            handle.write("Fatal Python error: Segmentation fault\n\nCurrent thread:\n")

    writer = threading.Thread(target=meanwhile)
    writer.start()
    try:
        followed = list(follow_logs(tmp_path, LogFilter(level="error"), poll=0.02, stop_after=0.8))
    finally:
        writer.join()
    assert [(r["event"], r["output"], r["cluster"]) for r in followed] == [
        ("output", "Fatal Python error: Segmentation fault\nCurrent thread:", "front")
    ]


def test_a_run_of_plain_lines_prints_under_its_line(monkeypatch: Any) -> None:
    import io

    from rich.console import Console

    from fleetops.cli import _fleet

    printed = io.StringIO()
    monkeypatch.setattr(_fleet, "out", Console(file=printed, width=300, color_system=None))
    record = {"ts": time.time(), "level": "error", "event": "output", "source": "front-0"}
    _fleet._print_log({**record, "output": TRACEBACK}, json_output=False)
    line, *below = printed.getvalue().splitlines()
    assert line.endswith("error   front-0 output ")
    assert below == ["    " + text for text in TRACEBACK.splitlines()]
