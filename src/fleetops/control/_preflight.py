"""Checks made before a deploy or an apply touches anything.

A spec can be valid and still name an agent entrypoint that does not import: its
workers would start, fail to load their agents and crash in a loop. So every
entrypoint is imported first, as a worker imports it, and the first one that fails
is refused with its field path (``clusters.<name>.agents[<i>].entrypoint``), its
value and the fix. A SQLite store whose directory cannot be made (it lies under a
regular file, or on a file system that makes none) is refused the same way, naming
``store``, before a deploy writes anything. Both are a user's mistake, raised as
:class:`ConfigError` before any deployment phase (the store's when the control plane
is made, the entrypoints' when it deploys): a phase that fails is an outage's exit
status (1), a mistake is a usage error's (2).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path

from .._exceptions import ConfigError, FleetOpsError
from ..runtime import load_agent
from ..spec import FleetSpec
from ._footprint import sqlite_file

#: How long the agent modules of a spec may take to import in a fresh process.
IMPORT_CHECK_TIMEOUT = 60.0

# Run by ``python -c``: imports only the runtime (a worker's own imports), puts the
# fleet's directories on the path, and prints the first failure as the last line.
_IMPORT_CHECK = """\
import json, sys
from fleetops.runtime import load_agent
paths, entrypoints = json.loads(sys.argv[1])
sys.path[:0] = paths
failed = None
for field, entrypoint in entrypoints:
    try:
        load_agent(entrypoint)
    except Exception as exc:
        failed = [field, entrypoint, getattr(exc, "fix", f"{type(exc).__name__}: {exc}")]
        break
print(json.dumps(failed))
"""


class ImportCheckFailed(FleetOpsError):
    """The agent modules could not be checked: the import check did not finish."""


def entrypoints(spec: FleetSpec) -> list[tuple[str, str]]:
    """Every agent's (field path, entrypoint), in spec order."""
    return [
        (f"clusters.{name}.agents[{index}].entrypoint", agent.entrypoint)
        for name, cluster in spec.clusters.items()
        for index, agent in enumerate(cluster.agents)
    ]


def python_path(spec: FleetSpec) -> list[str]:
    """The directories the spec's workers import their agents from."""
    return sorted({path for plan in spec.cluster_plans() for path in plan.python_path})


def import_entrypoints(spec: FleetSpec) -> None:
    """Import every entrypoint of ``spec`` in this process (a deploy's, which has
    imported none of them yet); :class:`ConfigError` for the first that does not."""
    for path in python_path(spec):
        if path not in sys.path:
            sys.path.insert(0, path)
    for field, entrypoint in entrypoints(spec):
        try:
            load_agent(entrypoint)
        except ConfigError as exc:
            raise ConfigError(field, entrypoint, exc.fix) from exc


async def check_entrypoints(spec: FleetSpec) -> None:
    """Import every entrypoint of ``spec`` in a new Python process, as a worker would.

    A new process, not this one: a running control plane has imported the agent
    modules already, as they were when it started, and would answer for those, not
    for the code a new worker gets. Raises :class:`ConfigError` for the first that
    does not import.
    """
    argument = json.dumps([python_path(spec), entrypoints(spec)])
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _IMPORT_CHECK,
        argument,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(IMPORT_CHECK_TIMEOUT):
            stdout, stderr = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise ImportCheckFailed(
            f"the agent modules did not import within {IMPORT_CHECK_TIMEOUT:.0f} s: "
            "look for a module that blocks or loops when it is imported"
        ) from None
    lines = stdout.decode(errors="replace").strip().splitlines()
    try:
        failed = json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = stderr.decode(errors="replace").strip().splitlines()[-1:]
        raise ImportCheckFailed(
            "the agent modules' import check ended without an answer "
            f"(exit status {process.returncode}{': ' + tail[0] if tail else ''})"
        ) from None
    if failed is not None:
        field, entrypoint, fix = failed
        raise ConfigError(field, entrypoint, fix)


def check_store_directory(spec: FleetSpec) -> None:
    """:class:`ConfigError` for a SQLite store whose directory is not there and
    cannot be made; nothing is left behind.

    The nearest directory that is there must be one (not a regular file), and the
    first one missing below it is made and removed again, to learn that it can be:
    a file system may refuse it (``/proc``), and permissions say nothing to root.
    """
    database = sqlite_file(spec.store_url())
    if database is None:
        return
    missing: Path | None = None
    there = database.parent
    try:
        while not there.exists():  # False for a path under a regular file, too
            missing, there = there, there.parent
        is_dir = there.is_dir()
    except OSError as exc:  # a directory on the way that may not be searched
        problem = f"{there} cannot be reached ({exc.strerror})"
    else:
        if not is_dir:
            kind = "a file" if there.is_file() else "something else"
            problem = f"{there} is {kind}, not a directory"
        elif missing is None:
            return
        else:
            try:
                missing.mkdir()
            except FileExistsError:
                if missing.is_dir():  # another process made it meanwhile
                    return
                kind = "a link to nothing" if missing.is_symlink() else "not a directory"
                problem = f"{missing} is {kind}"
            except OSError as exc:
                problem = f"the directory {missing} cannot be made ({exc.strerror})"
            else:
                with contextlib.suppress(OSError):  # something was put in it meanwhile
                    missing.rmdir()
                return
    raise ConfigError(
        "store",
        spec.store.url,
        f"{problem}: name a database file in a directory that is there or can be "
        "made, such as sqlite:///.fleetops/fleet.db",
    )


__all__ = [
    "check_entrypoints",
    "check_store_directory",
    "entrypoints",
    "import_entrypoints",
    "python_path",
]
