"""The fleet's log files: those of workers long gone are deleted, the rest kept."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fleetops.telemetry._logsearch import (
    OUTPUT_CHARS,
    LogFilter,
    _Tail,
    follow_logs,
    prune_logs,
    search_logs,
)


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
    like a record: one for each run of such lines, dated by the record before it (the
    first run by the record after it, the last by the file's last write), in its
    file's cluster, at level error when Python says it is one."""
    t = time.time() - 60
    worker = tmp_path / "front-0-aaaa.log"
    group = "  + Exception Group Traceback (most recent call last):\n  | ExceptionGroup: x"
    worker.write_text(
        "\n".join(
            [
                "loading the model",  # before any record: dated by the one after it
                _record(t, "worker.started", cluster="front"),
                TRACEBACK,
                _record(t + 2, "task.succeeded", cluster="front", task_id=4),
                group,
                _record(t + 3, "task.failed", cluster="front", task_id=5),
                "hello from an agent",
                "",
                "and its second line",
                "",
            ]
        )
        + '\n{"ts": 1, "event": "being wri'  # written to as it is read: left for later
    )
    os.utime(worker, (t + 4, t + 4))
    printed = tmp_path / "spares.log"  # nothing but prints, and a lot of them
    printed.write_text("".join(f"line {n:05}\n" for n in range(3000)))
    os.utime(printed, (t + 5, t + 5))

    found = search_logs(tmp_path, LogFilter())
    assert [(r["event"], r["source"], r["ts"]) for r in found] == [
        ("output", "spares", t + 5),
        ("output", "front-0-aaaa", t + 4),  # the last thing written
        ("task.failed", "front-0-aaaa", t + 3),
        ("output", "front-0-aaaa", t + 2),  # at the record before it; newest first,
        ("task.succeeded", "front-0-aaaa", t + 2),  # the later line first
        ("output", "front-0-aaaa", t),
        ("worker.started", "front-0-aaaa", t),
        ("output", "front-0-aaaa", t),  # dated by the record after it, and before it
    ]
    crash = found[5]
    assert crash == {
        "ts": t,
        "level": "error",
        "event": "output",
        "output": TRACEBACK,
        "source": "front-0-aaaa",
        "cluster": "front",
    }
    assert found[7]["output"] == "loading the model" and found[7]["level"] == "info"
    assert (found[3]["output"], found[3]["level"]) == (group, "error")
    assert found[1]["output"] == "hello from an agent\n\nand its second line"
    assert found[1]["level"] == "info" and "cluster" not in found[0]
    # a long run keeps its end, where a traceback names its error
    cut = 3000 * len("line 00000\n") - 1 - OUTPUT_CHARS
    assert found[0]["output"].startswith(f"[{cut:,} characters cut]\n")
    assert found[0]["output"].endswith("\nline 02999")
    assert len(found[0]["output"]) < OUTPUT_CHARS + 40

    # the filters see them as records: text, level and cluster
    assert search_logs(tmp_path, LogFilter(text="zerodivision")) == [crash]
    assert search_logs(tmp_path, LogFilter(level="error")) == [found[3], crash]
    assert search_logs(tmp_path, LogFilter(cluster="front")) == found[1:]
    assert search_logs(tmp_path, LogFilter(task_id=4)) == [found[4]]

    # a line still being written: a record waits for the next search, a print shows
    (tmp_path / "mid-0-cccc.log").write_text(
        _record(t, "worker.started") + '\n{"ts": 1, "event": "half'
    )
    (tmp_path / "end-0-dddd.log").write_text(
        _record(t, "worker.started") + "\nout of memory, giving up"
    )
    assert [r["event"] for r in search_logs(tmp_path, LogFilter(text="half"))] == []
    assert [r["output"] for r in search_logs(tmp_path, LogFilter(text="giving up"))] == [
        "out of memory, giving up"
    ]
    # faulthandler's dump of the threads is an error
    dump = 'Thread 0x00007f (most recent call first):\n  File "agents.py", line 9 in wait'
    (tmp_path / "hung-0-eeee.log").write_text(_record(t, "worker.started") + "\n" + dump + "\n")
    [hung] = search_logs(tmp_path, LogFilter(text="most recent call first"))
    assert (hung["output"], hung["level"]) == (dump, "error")
    for written in ("mid-0-cccc", "end-0-dddd", "hung-0-eeee"):  # runs dated by the file
        os.utime(tmp_path / f"{written}.log", (t, t))
    # a worker's current file and its older generation at the same time: the current first
    (tmp_path / "gen-0-ffff.log").write_text(_record(t + 9, "newer") + "\n")
    (tmp_path / "gen-0-ffff.log.1").write_text(
        _record(t + 9, "older") + "\n" + _record(t + 9, "older, later line") + "\n"
    )
    found = search_logs(tmp_path, LogFilter(), limit=3)
    assert [(r["event"], r["source"]) for r in found] == [
        ("newer", "gen-0-ffff"),
        ("older, later line", "gen-0-ffff"),
        ("older", "gen-0-ffff"),
    ]

    # a printed dict that names no usable cluster is a record like any other
    (tmp_path / "back-0-bbbb.log").write_text(
        _record(t, "worker.started", cluster=["not", "a", "name"]) + "\nplain\n"
    )
    assert "cluster" not in search_logs(tmp_path, LogFilter(text="plain"))[0]


def test_following_a_run_of_plain_lines_waits_for_its_end_and_names_its_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Followed, a traceback written in parts is one record, at level error though its
    first part was read alone: a run of plain lines at the end waits for the next
    record, or for a read that finds the file as it was. A file that begins while it
    is followed gives its output the cluster its records name."""
    worker = tmp_path / "front-0-aaaa.log"
    worker.write_text(_record(time.time(), "worker.started", cluster="front") + "\n")
    tail = _Tail(worker, 0)  # as follow_logs reads a file that began meanwhile
    first, rest = TRACEBACK.split("\n", 1)

    assert [r["event"] for r, _ in tail.read()] == ["worker.started"]
    with worker.open("a") as handle:
        handle.write(first + "\n")
    assert tail.read() == []  # it may go on
    with worker.open("a") as handle:
        handle.write(rest + "\n")
    assert tail.read() == []  # it went on: it may go on still
    [(crash, text)] = tail.read()  # as it was: that was all
    assert (crash["event"], crash["level"], crash["cluster"]) == ("output", "error", "front")
    assert crash["output"] == text == TRACEBACK
    assert tail.read() == []

    with worker.open("a") as handle:  # a record after a run ends the run at once
        handle.write("printed\n" + _record(time.time(), "task.succeeded") + "\n")
    assert [(r["event"], r.get("output")) for r, _ in tail.read()] == [
        ("output", "printed"),
        ("task.succeeded", None),
    ]

    # a run that keeps growing (a progress bar) waits HOLD_SECONDS at most
    monkeypatch.setattr("fleetops.telemetry._logsearch.HOLD_SECONDS", 0.2)
    with worker.open("a") as handle:
        handle.write("step 1\n")
    assert tail.read() == []
    time.sleep(0.25)
    with worker.open("a") as handle:
        handle.write("step 2\n")
    [(bar, _)] = tail.read()  # grown, but held long enough
    assert bar["output"] == "step 1\nstep 2"

    # a run still held when the file is rotated is read from the older generation
    with worker.open("a") as handle:
        handle.write(_record(time.time(), "task.succeeded") + "\n" + first + "\n")
    assert [r["event"] for r, _ in tail.read()] == ["task.succeeded"]  # the run waits
    worker.rename(worker.with_name(worker.name + ".1"))
    worker.write_text(_record(time.time(), "worker.rotated_log") + "\n")
    assert [(r["event"], r.get("output")) for r, _ in tail.read()] == [
        ("output", first),
        ("worker.rotated_log", None),
    ]

    # a run at the start of a read is dated by the last record read before it, as a
    # search dates it; a file whose records name several clusters names none
    control = tmp_path / "control.log"
    control.write_text(_record(100.0, "apply", cluster="a") + "\n" + '{"ts": 150.0, "ev')
    followed = _Tail(control)  # from the end of the last whole line
    with control.open("a") as handle:
        handle.write('ent": "scale", "cluster": "b"}\n')
        handle.write(_record(200.0, "apply", cluster="b") + "\nprinted\n")
    assert [r["event"] for r, _ in followed.read()] == ["scale", "apply"]
    with control.open("a") as handle:
        handle.write(_record(300.0, "apply", cluster="a") + "\n")
    [(late, _), _] = followed.read()
    assert (late["output"], late["ts"], "cluster" in late) == ("printed", 200.0, False)

    # followed from its end, a file's earlier records name the cluster and date a run
    earlier = tmp_path / "front-2-cccc.log"
    earlier.write_text(_record(500.0, "worker.started", cluster="front") + "\n")
    from_end = _Tail(earlier)
    with earlier.open("a") as handle:
        handle.write("printed\n" + _record(600.0, "task.succeeded") + "\n")
    [(run, _), _] = from_end.read()
    assert (run["output"], run["ts"], run["cluster"]) == ("printed", 500.0, "front")

    # follow_logs itself: a worker's file that begins meanwhile, its crash included
    def meanwhile() -> None:
        time.sleep(0.5)
        later = tmp_path / "front-1-bbbb.log"
        later.write_text(_record(time.time(), "worker.started", cluster="front") + "\n")
        time.sleep(0.1)
        with later.open("a") as handle:
            handle.write(TRACEBACK + "\n")

    writer = threading.Thread(target=meanwhile)
    writer.start()
    try:
        found = list(follow_logs(tmp_path, LogFilter(level="error"), poll=0.05, stop_after=2.0))
    finally:
        writer.join()
    assert [(r["source"], r["output"], r["cluster"]) for r in found] == [
        ("front-1-bbbb", TRACEBACK, "front")
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
