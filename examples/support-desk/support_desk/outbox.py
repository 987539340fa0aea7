"""The outbox: where replies to customers go, one JSON line each.

It stands for the email or ticketing system a real support desk would call, and it
behaves like a good one: it is an idempotent receiver. Every line carries the key it
was delivered under, and a delivery whose key is already there is skipped, so an
effect that runs again after a crash (same ``call.key``) never sends a reply twice.
A file lock makes check-then-append safe across worker processes.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

OUTBOX_ENV = "SUPPORT_DESK_OUTBOX"
STATE_DIR = ".fleetops"
OUTBOX_NAME = "outbox.jsonl"


def default_outbox_path() -> Path:
    """``$SUPPORT_DESK_OUTBOX``, else ``.fleetops/outbox.jsonl`` beside the fleet spec."""
    configured = os.environ.get(OUTBOX_ENV)
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parent.parent / STATE_DIR / OUTBOX_NAME


def append_once(path: Path, key: str, record: Mapping[str, Any]) -> bool:
    """Append ``record`` under ``key`` unless a line with that key is already there.

    Answers True when the line was written, False when the key was already delivered.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            handle.seek(0)
            text = handle.read()
            if any(_key_of(line) == key for line in text.splitlines()):
                return False
            # a writer that died mid-line left a torn line: start on a fresh one
            prefix = "\n" if text and not text.endswith("\n") else ""
            handle.write(prefix + json.dumps({"key": key, **record}, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
            return True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _key_of(line: str) -> str | None:
    try:
        found = json.loads(line)
    except json.JSONDecodeError:
        return None  # a torn line: its delivery never completed
    return found.get("key") if isinstance(found, dict) else None


def read_outbox(path: Path) -> list[dict[str, Any]]:
    """Every delivered line, in order (none when nothing was delivered yet)."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if _key_of(line) is not None]
