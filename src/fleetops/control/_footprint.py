"""What a deploy leaves on disk, so that a failed one can take back what it made.

A deploy that fails must not leave a half-made fleet behind: a store file with a
deployment row, a state directory with the spec and routes of a fleet that never
ran. :class:`Footprint` notes, before the deploy, which of the files and directories
a deploy writes are there already; :meth:`Footprint.undo` removes those that were
not and puts back the old contents of those it overwrote. What was there before (a
store, another run's state) is never deleted.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from urllib.parse import urlsplit

#: The files SQLite keeps beside a database while it is open.
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def sqlite_file(store_url: str) -> Path | None:
    """The database file of a SQLite store URL, or None for another store."""
    if store_url.startswith("sqlite://"):
        parts = urlsplit(store_url)
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
    elif "://" not in store_url:
        path = store_url
    else:
        return None
    return Path(path).absolute() if path else None


class Footprint:
    """A deploy's files: ``files`` it may make (removed if they were not there),
    ``restored`` small files it overwrites (their old contents put back), and
    ``dirs`` that hold them (innermost first: removed if this deploy made them and
    they are empty again)."""

    def __init__(self, *, files: list[Path], restored: list[Path], dirs: list[Path]) -> None:
        self._new_files = [f for f in files if not f.exists()]
        self._restored = {f: _read(f) for f in restored}
        self._new_dirs = [d for d in dirs if not d.exists()]

    def undo(self, *, keep: tuple[Path, ...] = ()) -> None:
        """Take back what the deploy made, but what is in the directories ``keep``."""
        for path, before in self._restored.items():
            if before is None:
                self._new_files.append(path)
            elif _read(path) != before:
                path.write_bytes(before)
        for path in self._new_files:
            if not any(path.is_relative_to(d) for d in keep):
                with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                    path.unlink()
        for directory in self._new_dirs:
            if directory not in keep:
                with contextlib.suppress(OSError):  # not empty (or gone): leave it
                    os.rmdir(directory)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):  # not there, or cannot be
        return None
