"""The fleet's state directory and the lock that makes one control plane its owner.

The lock is an ``flock`` on ``.fleetops/control.lock``: the kernel drops it when the
owner dies, however it dies, so a crashed control plane never leaves a stale lock.
The file also says where the running control plane's API listens, for the CLI.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .._exceptions import UsageError

STATE_DIR = ".fleetops"
LOCK_FILE = "control.lock"


class FleetRunning(UsageError):
    """Another control plane already runs this fleet."""


@dataclass(frozen=True, slots=True)
class RunningFleet:
    pid: int
    api_url: str
    spec: str
    started_at: float


class ControlLock:
    """Exclusive ownership of a fleet's state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / LOCK_FILE
        self._file: IO[str] | None = None

    def acquire(self, info: dict[str, Any]) -> None:
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held while running
        except (FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError) as exc:
            raise unusable_state_dir(self.state_dir, exc) from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            running = read_running(self.state_dir)
            where = f" (pid {running.pid}, API {running.api_url})" if running else ""
            raise FleetRunning(
                f"a control plane already runs the fleet in {self.state_dir}{where}: "
                "stop it with 'fleetops down' first"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(info))
        handle.flush()
        self._file = handle

    def update(self, info: dict[str, Any]) -> None:
        """Rewrite what the lock file says (e.g. the API's port once it is bound)."""
        if self._file is None:
            return
        self._file.seek(0)
        self._file.truncate()
        self._file.write(json.dumps(info))
        self._file.flush()

    def release(self) -> None:
        if self._file is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()
        self._file = None


def unusable_state_dir(state_dir: Path, exc: OSError) -> UsageError:
    """The error for a state directory that cannot be used: a file where the
    directory should be, or a lock file that cannot be opened."""
    if isinstance(exc, FileExistsError | NotADirectoryError):
        where = next((p for p in (state_dir, *state_dir.parents) if p.is_file()), state_dir)
        return UsageError(
            f"{where} is a file, not a directory: fleetops keeps the fleet's store, logs "
            f"and lock in {state_dir}; move or remove that file"
        )
    return UsageError(
        f"cannot use the fleet's state directory {state_dir}: {exc.strerror or exc}; "
        f"make {state_dir / LOCK_FILE} a file this user can read and write"
    )


def read_running(state_dir: Path) -> RunningFleet | None:
    """The control plane that holds the lock in ``state_dir``, if one does; a
    UsageError if ``state_dir`` cannot be used (a file where it should be, say)."""
    path = state_dir / LOCK_FILE
    try:
        with open(path, encoding="utf-8") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                data = json.loads(handle.read() or "{}")
                return RunningFleet(
                    int(data["pid"]),
                    str(data["api_url"]),
                    str(data["spec"]),
                    float(data["started_at"]),
                )
            fcntl.flock(handle, fcntl.LOCK_UN)
            return None  # a leftover file nobody holds
    except (FileNotFoundError, KeyError, ValueError):
        return None
    except (NotADirectoryError, IsADirectoryError, PermissionError) as exc:
        raise unusable_state_dir(state_dir, exc) from None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
