"""An agent module that notes every process that imports it, one pid a line, in the
file FLEETOPS_TEST_IMPORT_LOG names: the warm spare tests see which process loaded
it, and when."""

from __future__ import annotations

import os

from fleetops import Context, TaskInfo, agent

IMPORT_LOG_ENV = "FLEETOPS_TEST_IMPORT_LOG"

if os.environ.get(IMPORT_LOG_ENV):
    with open(os.environ[IMPORT_LOG_ENV], "a", encoding="ascii") as _log:
        _log.write(f"{os.getpid()}\n")


@agent(name="marked")
async def marked(task: TaskInfo, ctx: Context) -> int:
    """Answer the pid of the worker that ran it."""
    return os.getpid()
