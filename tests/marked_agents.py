"""An agent module for the warm spare tests: it notes every process that imports it,
and can be told to hold a spare's import, or to exit at import, by files that exist.

- FLEETOPS_TEST_IMPORT_LOG names a file: each importer appends its pid, a line.
- FLEETOPS_TEST_HOLD_SPARES names a file: while it exists, a warm spare's import of
  this module waits (a cold worker's does not).
- FLEETOPS_TEST_EXIT_AT_IMPORT names a file: while it exists, importing this module
  exits the process (``sys.exit``), as a module that checks its settings might.
- FLEETOPS_TEST_PRINT_AT_IMPORT: a line to print (and flush) on stdout at import.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

from fleetops import Context, TaskInfo, agent

IMPORT_LOG_ENV = "FLEETOPS_TEST_IMPORT_LOG"
HOLD_SPARES_ENV = "FLEETOPS_TEST_HOLD_SPARES"
EXIT_ENV = "FLEETOPS_TEST_EXIT_AT_IMPORT"

if os.environ.get(IMPORT_LOG_ENV):
    with open(os.environ[IMPORT_LOG_ENV], "a", encoding="ascii") as _log:
        _log.write(f"{os.getpid()}\n")
if os.environ.get("FLEETOPS_TEST_PRINT_AT_IMPORT"):
    print(os.environ["FLEETOPS_TEST_PRINT_AT_IMPORT"], flush=True)
if os.environ.get(EXIT_ENV) and Path(os.environ[EXIT_ENV]).exists():
    sys.exit("marked_agents: told to exit at import")
try:  # a worker loads its agents in its running event loop, a spare too
    _LOOP_AT_IMPORT: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
except RuntimeError:
    _LOOP_AT_IMPORT = None
while "--spare" in sys.argv and os.environ.get(HOLD_SPARES_ENV):
    if not Path(os.environ[HOLD_SPARES_ENV]).exists():
        break
    time.sleep(0.02)


@agent(name="marked")
async def marked(task: TaskInfo, ctx: Context) -> list[object]:
    """Answer the pid of the worker that ran it, the file it was imported from, and
    whether it was imported in the event loop that runs it."""
    return [os.getpid(), __file__, _LOOP_AT_IMPORT is asyncio.get_running_loop()]
