"""The fleet's log files: those of workers long gone are deleted, the rest kept."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from fleetops.telemetry._logsearch import LogFilter, follow_logs, prune_logs, search_logs


def _log(log_dir: Path, name: str, age: float) -> Path:
    path = log_dir / f"{name}.log"
    path.write_text(f'{{"ts": {time.time() - age}, "level": "info", "event": "{name}"}}\n')
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def test_prune_deletes_old_worker_logs_but_not_live_workers_or_the_control_plane(
    tmp_path: Path,
) -> None:
    day = 86400.0
    _log(tmp_path, "control", 3 * day)  # the control plane's own: never
    _log(tmp_path, "front-0-aaaa", 2 * day)  # gone long ago: deleted
    _log(tmp_path, "front-1-bbbb", 2 * day)  # idle for two days but alive: kept
    _log(tmp_path, "back-0-cccc", 60.0)  # gone a minute ago: kept for now
    (tmp_path / "notes.txt").write_text("not a log")  # not ours: untouched
    os.utime(tmp_path / "notes.txt", (0, 0))

    gone = prune_logs(tmp_path, time.time() - day, keep={"front-1-bbbb"})

    assert gone == ["front-0-aaaa"]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["back-0-cccc.log", "control.log", "front-1-bbbb.log", "notes.txt"]
    events = {r["event"] for r in search_logs(tmp_path, LogFilter())}
    assert events == {"control", "front-1-bbbb", "back-0-cccc"}
    assert prune_logs(tmp_path / "missing", time.time()) == []


def test_search_and_follow_go_on_when_a_listed_file_was_pruned_meanwhile(
    tmp_path: Path,
) -> None:
    kept = _log(tmp_path, "front-0-aaaa", 0)
    pruned = _log(tmp_path, "back-0-bbbb", 0)

    class ListedBeforePruning(type(tmp_path)):  # type: ignore[misc]
        """A directory whose listing was taken before prune_logs deleted a file."""

        def glob(self, pattern: str) -> Any:
            return iter([self / kept.name, self / pruned.name])

    listed = ListedBeforePruning(tmp_path)
    pruned.unlink()
    assert [r["event"] for r in search_logs(listed, LogFilter())] == ["front-0-aaaa"]

    def meanwhile() -> None:
        time.sleep(0.2)
        with kept.open("a") as handle:
            handle.write(f'{{"ts": {time.time()}, "level": "info", "event": "later"}}\n')

    writer = threading.Thread(target=meanwhile)
    writer.start()
    try:
        seen = [r["event"] for r in follow_logs(listed, LogFilter(), poll=0.02, stop_after=0.8)]
    finally:
        writer.join()
    assert seen == ["later"]  # only what was written after it began
