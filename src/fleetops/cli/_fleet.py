"""``fleetops up``, ``down``, ``apply``, ``status``, ``submit``, ``tasks``, ``readiness``,
``changes``: deploying and operating a fleet."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from .._exceptions import ConfigError, FleetOpsError, StoreError
from .._units import parse_duration
from ..control import PHASES, ControlPlane, DeploymentReport, read_running
from ..control._footprint import sqlite_file
from ..control._state import pid_alive
from ..queue._client import MAX_VALUE_DEPTH
from ..runtime._gc import tune_for_serving
from ..spec import FleetSpec
from ..store._models import MAX_AHEAD_SECONDS
from ._common import (
    EXIT_FAILURE,
    EXIT_USAGE,
    err,
    fail,
    out,
    print_json,
    setup_logging,
    user_errors,
)
from ._remote import api_url, call
from ._spec import load_or_exit

SPEC_HELP = "The fleet spec (YAML)."
API_PORT_HELP = "Override the spec's api.port (0: any free port)."
#: Task ids are 64-bit signed integers in both stores.
LARGEST_TASK_ID = 2**63 - 1
API_HELP = "The control plane's API (default: the fleet running here, else 127.0.0.1:8470)."


def _port(value: int | None) -> int | None:
    """Refuse a port out of range while the options are read, before anything runs."""
    if value is not None and not 0 <= value <= 65535:
        raise typer.BadParameter(f"{value} is not a port: use 1 to 65535, or 0 for any free port")
    return value


def _shown(number: float) -> str:
    return str(number) if isinstance(number, int) else f"{number:g}"


def _within(low: float, high: float | None = None) -> Callable[[Any], Any]:
    """A check of a number option, run while the options are read: one out of ``low``
    to ``high`` is refused naming the value and the range (typer's min and max say
    neither). The range is for the option's help to show."""

    def check(value: float | None) -> float | None:
        if value is None or (low <= value and (high is None or value <= high)):
            return value
        allowed = f"{_shown(low)} or more" if high is None else f"{_shown(low)} to {_shown(high)}"
        raise typer.BadParameter(f"{_shown(value)} is out of range: use {allowed}")

    return check


#: The longest idempotency key the API takes.
MAX_KEY_LENGTH = 200


def _key(value: str | None) -> str | None:
    """Refuse an idempotency key that is empty or too long, before anything is sent."""
    if value is not None and not 1 <= len(value) <= MAX_KEY_LENGTH:
        raise typer.BadParameter(
            f"{value[:40]!r} ({len(value)} characters) is no key: give 1 to "
            f"{MAX_KEY_LENGTH} characters, or leave --key out"
        )
    return value


def _time(at: float | None) -> str:
    """``at`` as a UTC date and time; as the raw number of seconds if it is no date
    (a time past the year 9999, kept by a version that did not refuse it)."""
    if at is None:
        return "—"
    try:
        return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S")
    except (ValueError, OverflowError, OSError):
        return str(at)


def _state(task: dict[str, Any]) -> str:
    """A task's state, with when it is due if it waits for a time to come (a task
    submitted with --delay, or a retry's backoff)."""
    due = task.get("run_after")
    if task["state"] == "queued" and due is not None and due > time.time():
        return f"queued, due {_time(due)}"
    return str(task["state"])


def _print_report(report: DeploymentReport) -> None:
    for phase in report.phases:
        mark = "[green]✓[/]" if phase.ok else "[red]✗[/]"
        out.print(
            f"{mark} {phase.name:<28} {phase.seconds:6.2f} s  {escape(phase.detail)}",
            highlight=False,
        )
    if not report.deployment_successful:
        err.print(
            f"[bold red]deployment failed in {report.failed_phase}:[/] "
            f"{escape(report.error or '')}",
            highlight=False,
        )
        err.print("everything this deployment started was stopped")
        return
    if report.readiness is not None:
        table = Table(
            title=f"production readiness: {report.readiness.score}/100", title_justify="left"
        )
        table.add_column("check")
        table.add_column("weight", justify="right")
        table.add_column("")
        table.add_column("why")
        for check in report.readiness.checks:
            table.add_row(
                check.name,
                str(check.weight),
                "[green]pass[/]" if check.passed else "[red]fail[/]",
                escape(check.why),
            )
        out.print(table)


async def _status_table(plane: ControlPlane) -> Table:
    client = plane.client
    table = Table(
        title=f"fleet {plane.spec.fleet.name} — API {plane.api_url} — Ctrl-C stops",
        title_justify="left",
    )
    for column in ("cluster", "workers", "queued", "running", "succeeded", "dead", "health"):
        table.add_column(column, justify="left" if column in ("cluster", "health") else "right")
    counts: dict[tuple[str, str, str], int] | None = {}
    try:
        counts = await plane.task_counts() if client else {}
    except StoreError as exc:  # a store restarting: the fleet goes on, and so does this view
        counts = None
        table.caption = f"[yellow]task counts unavailable: {escape(str(exc))}[/]"
    sup = plane.supervisor
    for name in plane.spec.clusters:
        by_state: dict[str, int] = {}
        for (queue, _, state), n in (counts or {}).items():
            if queue == name:
                by_state[state] = by_state.get(state, 0) + n
        live = sum(1 for h in sup.live_workers(name) if h.first_heartbeat_at) if sup else 0
        health = "[red]degraded[/]" if sup and name in sup.degraded else "[green]ok[/]"
        table.add_row(
            name,
            f"{live}/{plane.desired_replicas(name)}",
            *(
                "?" if counts is None else str(by_state.get(state, 0))
                for state in ("queued", "running", "succeeded", "dead")
            ),
            health,
        )
    return table


class LiveTable:
    """The live status table of ``fleetops up``, written by threads of its own.

    Writing to a terminal blocks when the terminal stops reading (Ctrl-S, an ssh
    session whose network stalled, a stopped ``script``). rich's ``Live.update``
    waits for its refresh thread, which is then stuck in that write: called on the
    event loop, it froze the loop that runs the fleet's supervision, failure
    detection and API. Here updates run on a thread, one at a time; while one is
    stuck the next tables are dropped, and closing waits a moment, not forever.
    """

    def __init__(self, console: Console, first: Table) -> None:
        self._live = Live(first, console=console, refresh_per_second=2)
        self.dropped = 0
        # starting writes to the terminal too (it hides the cursor)
        self._updating = threading.Thread(
            target=self._live.start, name="fleetops-live-table", daemon=True
        )
        self._updating.start()

    def show(self, table: Table) -> None:
        """Draw ``table`` from a thread; drop it if the last one is still being drawn."""
        if self._updating.is_alive():
            self.dropped += 1
            return
        self._updating = threading.Thread(
            target=self._live.update, args=(table,), name="fleetops-live-table", daemon=True
        )
        self._updating.start()

    @property
    def is_started(self) -> bool:
        """Whether the display is on (it is off once :meth:`close` got through)."""
        return bool(self._live.is_started)

    async def close(self, wait: float = 1.0) -> None:
        """Stop the display, waiting at most ``wait`` seconds for a stuck terminal."""
        stopping = threading.Thread(target=self._live.stop, name="fleetops-live-stop", daemon=True)
        stopping.start()
        await asyncio.to_thread(stopping.join, wait)


async def _run_up(plane: ControlPlane, smoke: bool, json_output: bool, live: bool) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        """The first Ctrl-C (or SIGTERM) drains; the next stops at once: the workers
        still draining are killed, and what they held is queued again."""
        if not stop.is_set():
            stop.set()
        elif plane.supervisor is not None:
            plane.supervisor.hurry()
            if not json_output:
                threading.Thread(
                    target=err.print,
                    args=("stopping now: the workers still draining are killed",),
                    daemon=True,
                ).start()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    async with plane:
        status = None
        if not json_output:
            status = err.status("deploying…")
            status.start()
        try:
            report = await plane.deploy()
        finally:
            if status is not None:
                status.stop()
        if json_output and (smoke or not report.deployment_successful):
            print_json(report.as_dict())
        elif not json_output:
            _print_report(report)
        if not report.deployment_successful:
            return EXIT_FAILURE
        if smoke:
            return 0
        if json_output:
            print_json(report.as_dict())
        else:
            out.print(f"API and dashboard: [bold]{plane.api_url}[/]  (Ctrl-C drains and stops)")
        serving = asyncio.create_task(plane.serve(stop), name="reconciler")
        try:
            if live and not json_output:
                view = LiveTable(out, await _status_table(plane))
                try:
                    while not stop.is_set():
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(1.0):
                                await stop.wait()
                        view.show(await _status_table(plane))
                finally:
                    await view.close()
            else:
                await stop.wait()
        finally:
            stop.set()
            await serving
        if not json_output:
            # from a thread of its own: a terminal that stopped reading must not hold
            # up the drain that follows (see LiveTable)
            threading.Thread(
                target=err.print,
                args=("draining workers and stopping… (Ctrl-C again to stop at once)",),
                daemon=True,
            ).start()
    return 0


def up(
    file: Path = typer.Argument(..., help=SPEC_HELP),
    smoke: bool = typer.Option(False, "--smoke", help="Deploy, validate, tear down, exit."),
    json_output: bool = typer.Option(False, "--json", help="Print the deployment report as JSON."),
    actor: str = typer.Option(None, help="Who deploys (default: user@host)."),
    api_port: int = typer.Option(None, callback=_port, help=API_PORT_HELP),
    live: bool = typer.Option(True, help="Show a live status table while running."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show runtime logs."),
) -> None:
    """Deploy a fleet in phases and run it in the foreground; Ctrl-C drains and stops."""
    setup_logging(verbose, quiet_level=logging.CRITICAL)
    spec = load_or_exit(file)
    with user_errors():
        text = file.read_text(encoding="utf-8")
        plane = ControlPlane(spec, spec_text=text, actor=actor, api_port=api_port)
        tune_for_serving()  # a long-running process from here on
        code = asyncio.run(_run_up(plane, smoke, json_output, live))
    raise typer.Exit(code)


FLEET_FILE_HELP = "The fleet's spec or its directory (default: the fleet run from here)."


def _seconds(value: float) -> float:
    """Refuse a wait that is not a positive number of seconds, before anything runs."""
    if not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"{value:g} is not a wait: give seconds above 0, e.g. 120")
    return value


def _fleet_base(file: Path | None) -> Path:
    """The directory a fleet runs from: FILE's own if it is a spec, FILE if it is a
    directory, this one if there is no FILE."""
    if file is None:
        return Path.cwd()
    return file.resolve() if file.is_dir() else file.resolve().parent


def down(
    file: Path = typer.Argument(None, exists=True, help=FLEET_FILE_HELP),
    timeout: float = typer.Option(120.0, callback=_seconds, help="Seconds to wait for the drain."),
) -> None:
    """Stop the fleet running from this directory (or from FILE's), draining its workers."""
    base = _fleet_base(file)
    running = read_running(base / ".fleetops")
    if running is None:
        _stop_orphans(base, timeout)
        return
    import os

    os.kill(running.pid, signal.SIGTERM)
    err.print(f"asked the control plane (pid {running.pid}) to drain and stop…")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if read_running(base / ".fleetops") is None and not pid_alive(running.pid):
            out.print("[green]✓[/] fleet stopped")
            return
        time.sleep(0.2)
    fail(f"the control plane (pid {running.pid}) did not stop within {timeout:g} s")


def _stop_orphans(base: Path, timeout: float) -> None:
    """No control plane runs from ``base``: stop the workers one that was killed left
    finishing their tasks (see WorkerSettings.orphan_grace), if there are any, as a
    shutdown stops workers (they drain, and give back what they could not finish)."""
    import os

    orphans = _orphaned_workers(base)
    if not orphans:
        fail(f"no fleet is running from {base}", EXIT_USAGE)
    for pid in orphans:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:  # ended meanwhile
            pass
        except PermissionError:
            fail(f"worker pid {pid} belongs to another user: stop it as that user", EXIT_USAGE)
    err.print(
        f"no control plane runs from {base}; asked the {len(orphans)} worker(s) it left "
        f"running (pid {', '.join(map(str, orphans))}) to drain and stop…"
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(pid_alive(pid) for pid in orphans):
            out.print("[green]✓[/] its workers stopped")
            return
        time.sleep(0.2)
    fail(f"the workers (pid {', '.join(map(str, orphans))}) did not stop within {timeout:g} s")


def _orphaned_workers(base: Path) -> list[int]:
    """The pids of this host's live workers of the fleet last deployed from ``base``
    (its store, from the spec it applied), each still a fleetops worker process (a
    pid reused by another program is left alone). None where that cannot be told."""
    import os
    import socket

    from ..spec import SpecError, load_spec_text
    from ..store import open_store

    applied = base / ".fleetops" / "applied-spec.yaml"
    if not applied.is_file() or not Path("/proc").is_dir():
        return []
    try:
        # relative paths in it are the fleet directory's, as in the spec it came from
        text = applied.read_text(encoding="utf-8")
        url = load_spec_text(text, path=base / "applied-spec.yaml").store_url()
    except (OSError, ValueError, SpecError):
        return []
    database = sqlite_file(url)
    if database is not None and not database.is_file():
        return []  # no store: no worker wrote to one (and none is made here)
    try:
        store = open_store(url, migrate=False)  # only read: orphans may run older code
        try:
            workers = store.list_workers(live=True)
        finally:
            store.close()
    except FleetOpsError as exc:
        fail(f"could not look in the fleet's store for workers left running: {exc}")
    host, now = socket.gethostname(), time.time()
    pids = []
    for worker in workers:
        if worker.pid is None or worker.host != host or worker.pid == os.getpid():
            continue
        # still beating: a row a worker killed outright left behind is not, and its
        # pid may be another process's by now
        if worker.heartbeat_at is None or now - worker.heartbeat_at > ORPHAN_BEAT_SECONDS:
            continue
        try:
            with open(f"/proc/{worker.pid}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
            started, parent = _process_started_at(worker.pid)
        except (OSError, ValueError, IndexError):  # gone
            continue
        # a fleetops worker, the process that registered then (not one started after),
        # and an orphan: its supervisor (named in its arguments) is no longer its parent;
        # a control plane running elsewhere on this store, or one whose lock file
        # could not be read, still supervises its own
        supervisor = _supervisor_of(args)
        if (
            b"fleetops.runtime" in args
            and started <= worker.started_at + 1.0
            and supervisor is not None
            and parent != supervisor
        ):
            pids.append(worker.pid)
    return sorted(set(pids))


def _supervisor_of(args: list[bytes]) -> int | None:
    """The pid of the supervisor that started the worker with these arguments: the
    last of a spare's (``--spare KIND PID``), or ``parent_pid`` in a worker's config."""
    try:
        if b"--spare" in args:
            return int(args[args.index(b"--spare") + 2])
        for arg in args:
            if arg.startswith(b"{"):
                parent = json.loads(arg).get("parent_pid")
                return int(parent) if parent is not None else None
    except (ValueError, IndexError, AttributeError, TypeError):
        return None
    return None


#: A worker row whose last heartbeat is older than this is no live orphan's.
ORPHAN_BEAT_SECONDS = 30.0


def _process_started_at(pid: int) -> tuple[float, int]:
    """When process ``pid`` started, in seconds since the epoch, and its parent's pid
    (Linux's /proc)."""
    import os

    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
        # the command may hold spaces and parentheses: the fields follow the last ')'
        fields = f.read().rsplit(")", 1)[1].split()
    with open("/proc/stat", encoding="ascii") as f:
        boot = next(float(line.split()[1]) for line in f if line.startswith("btime "))
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK"), int(fields[1])


def apply(
    file: Path = typer.Argument(..., help=SPEC_HELP),
    reason: str = typer.Option("", help="Why: kept in the change log."),
    actor: str = typer.Option(None, help="Who (default: user@host)."),
    rollout: list[str] = typer.Option([], help="Restart this cluster even if unchanged."),
    api: str = typer.Option(None, help=API_HELP),
    json_output: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Change a running fleet to FILE: scale, add or remove clusters, roll out agents."""
    load_or_exit(file)
    from ..control import default_actor

    body = {
        "spec": file.read_text(encoding="utf-8"),
        "actor": actor or default_actor(),
        "reason": reason,
        "rollout": rollout,
    }
    result = call("POST", api_url(api, file), "/api/v1/apply", json=body)
    if json_output:
        print_json(result)
        return
    out.print(f"[green]✓[/] change {result['change_id']} applied")
    for action in result["actions"] or ["nothing to do: the fleet already matches"]:
        out.print(f"  • {escape(action)}", highlight=False)


def status(
    api: str = typer.Option(None, help=API_HELP),
    json_output: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Clusters, workers, queues and health of the running fleet."""
    url = api_url(api, None)
    clusters = call("GET", url, "/api/v1/clusters")
    if json_output:
        print_json(clusters)
        return
    table = Table(title=f"fleet at {url}", title_justify="left")
    for column in ("cluster", "workers", "queued", "running", "succeeded", "dead", "health"):
        table.add_column(column)
    for c in clusters:
        tasks = c["tasks"]
        table.add_row(
            c["name"],
            f"{c['heartbeating_workers']}/{c['desired_workers']}",
            str(tasks["queued"]),
            str(tasks["running"]),
            str(tasks["succeeded"]),
            str(tasks["dead"]),
            "[red]degraded[/]" if c["degraded"] else "[green]ok[/]",
        )
    out.print(table)


def _duration_option(given: str | None, flag: str, example: str) -> float | None:
    """Seconds of a duration option such as ``--delay 30s`` (None when not given); a
    bad one ends the command with a usage error naming ``flag``."""
    if given is None:
        return None
    try:
        seconds = parse_duration(given, flag)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    if not math.isfinite(seconds) or seconds > MAX_AHEAD_SECONDS:
        days = MAX_AHEAD_SECONDS // 86400
        fail(
            f"{flag}: {given!r} is further ahead than a task may be scheduled: use at most "
            f"{days}d (10 years), e.g. {example}",
            EXIT_USAGE,
        )
    return seconds


def submit(
    agent: str = typer.Argument(..., help="'cluster/agent'."),
    payload: str = typer.Argument("null", help="The payload as JSON."),
    priority: int = typer.Option(
        0, callback=_within(-1000, 1000), help="Higher runs first: -1000 to 1000."
    ),
    key: str = typer.Option(
        None,
        "--key",
        callback=_key,
        help=f"Idempotency key, 1 to {MAX_KEY_LENGTH} characters: the same key, the same task.",
    ),
    wait: bool = typer.Option(False, help="Wait for the task to finish and print it."),
    delay: str = typer.Option(
        None, "--delay", help="Keep it queued this long first, e.g. 30s or 2h (default: none)."
    ),
    deadline: str = typer.Option(
        None,
        "--deadline",
        help="Give up on it unless it finishes within this long, e.g. 10m (default: none).",
    ),
    max_attempts: int = typer.Option(
        None,
        "--max-attempts",
        callback=_within(1, 100),
        help="Tries before it is dead-lettered, 1 to 100 (default: the agent's retry policy).",
    ),
    api: str = typer.Option(None, help=API_HELP),
) -> None:
    """Submit a task to the running fleet."""
    # both counted on the fleet's clock, not this machine's
    delay_s = _duration_option(delay, "--delay", "2h")
    deadline_s = _duration_option(deadline, "--deadline", "10m")
    if deadline_s is not None and deadline_s <= 0:
        fail(f"--deadline: {deadline!r} leaves the task no time: use e.g. 10m", EXIT_USAGE)
    if deadline_s is not None and delay_s is not None and delay_s >= deadline_s:
        fail(
            f"--delay: {delay!r} is not shorter than --deadline {deadline!r}: the task would "
            "be due after its deadline; shorten the delay or lengthen the deadline",
            EXIT_USAGE,
        )
    try:
        value = json.loads(payload)
        json.dumps(value, allow_nan=False)  # Python reads NaN, Infinity and 1e999; JSON has none
    except json.JSONDecodeError as exc:
        fail(
            f"payload: {payload!r} is not JSON ({exc.msg}): quote strings, e.g. '\"hello\"'",
            EXIT_USAGE,
        )
    except RecursionError:
        fail(
            f"payload: nested too deep to read: nest it at most {MAX_VALUE_DEPTH} arrays or "
            "objects deep",
            EXIT_USAGE,
        )
    except ValueError:
        fail(
            f"payload: {payload!r} is not JSON (NaN/Infinity): JSON has no such numbers; "
            "send a finite number, a string or null",
            EXIT_USAGE,
        )
    url = api_url(api, None)
    body = {
        "agent": agent,
        "payload": value,
        "priority": priority,
        "idempotency_key": key,
        "delay": delay_s,
        "deadline_in": deadline_s,
        "max_attempts": max_attempts or 0,
    }
    result = call("POST", url, "/api/v1/tasks", json=body)
    if not wait:
        print_json(result)
        return
    with err.status(f"task {result['id']} running…"):
        while True:
            task = call("GET", url, f"/api/v1/tasks/{result['id']}")
            if task["state"] in ("succeeded", "dead", "cancelled"):
                break
            time.sleep(0.2)
    print_json(task)
    if task["state"] != "succeeded":
        raise typer.Exit(EXIT_FAILURE)


def _page_option(flag: str, lowest: int, help_text: str) -> Any:
    """``tasks``' --after or --before: a task id a page starts from."""
    return typer.Option(None, flag, callback=_within(lowest, LARGEST_TASK_ID), help=help_text)


def tasks(
    state: str = typer.Option(None, help="queued, running, succeeded, dead or cancelled."),
    cluster: str = typer.Option(None),
    agent: str = typer.Option(None),
    limit: int = typer.Option(
        None, callback=_within(1, 1000), help="Tasks listed, 1 to 1000 (default 20)."
    ),
    after: int = _page_option(
        "--after", 0, "List oldest first, from after this task id (0: from the oldest)."
    ),
    before: int = _page_option(
        "--before", 1, "List newest first (the default), from before this task id (1 or more)."
    ),
    task_id: int = typer.Option(None, "--id", help="Show one task with its attempts."),
    retry: list[int] = typer.Option(
        [], "--retry", help="Queue this dead letter again (repeat for more)."
    ),
    cancel: list[int] = typer.Option(
        [],
        "--cancel",
        help="Cancel this queued or running task, and the queued or running tasks it sent "
        "(repeat for more).",
    ),
    retry_dead: bool = typer.Option(
        False,
        "--retry-dead",
        help="Queue again every dead letter (of --cluster and --agent where given), "
        "once the cause is fixed.",
    ),
    cancel_queued: bool = typer.Option(
        False,
        "--cancel-queued",
        help="Cancel every queued task of --cluster (of --agent where given), and what "
        "each sent; running tasks finish.",
    ),
    api: str = typer.Option(None, help=API_HELP),
    json_output: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """List tasks, newest first (--after: oldest first), or show one with every attempt;
    retry dead letters, cancel tasks."""
    url = api_url(api, None)
    paged = after is not None or before is not None
    if cancel_queued:
        if (
            retry_dead
            or retry
            or cancel
            or task_id is not None
            or limit is not None
            or paged
            or state not in (None, "queued")
        ):
            fail(
                "--cancel-queued: cancels every queued task --cluster and --agent pick; use "
                "it without --retry-dead, --retry, --cancel, --id, --limit, --after, "
                "--before or a --state other than queued",
                EXIT_USAGE,
            )
        if cluster is None:
            fail(
                "--cancel-queued: name the cluster whose queue to empty with --cluster", EXIT_USAGE
            )
        _cancel_all_queued(url, cluster, agent)
        return
    if retry_dead:
        if (
            retry
            or cancel
            or task_id is not None
            or limit is not None
            or paged
            or state not in (None, "dead")
        ):
            fail(
                "--retry-dead: retries every dead letter --cluster and --agent pick; use it "
                "without --retry, --cancel, --id, --limit, --after, --before or a --state "
                "other than dead",
                EXIT_USAGE,
            )
        _retry_all_dead(url, cluster, agent)
        return
    if retry or cancel:
        _retry_or_cancel(url, retry, cancel)
        return
    if task_id is not None:
        print_json(call("GET", url, f"/api/v1/tasks/{task_id}"))
        return
    if after is not None and before is not None:
        fail(
            f"--after: {after} with --before {before}: page oldest first with --after, or "
            "newest first with --before, not both",
            EXIT_USAGE,
        )
    filters = {"state": state, "cluster": cluster, "agent": agent, "limit": limit}
    params = {k: v for k, v in filters.items() if v is not None}
    params.setdefault("limit", 20)
    if after is not None:
        params["after"] = after
    else:  # newest first: on a busy fleet the oldest are rarely what is looked for
        params |= {"newest": "true"} if before is None else {"before": before}
    page = call("GET", url, "/api/v1/tasks", params=params)
    if json_output:
        print_json(page)
        return
    table = Table(title_justify="left")
    for column in ("id", "cluster/agent", "state", "attempts", "created", "error"):
        table.add_column(column)
    for t in page["items"]:
        table.add_row(
            str(t["id"]),
            f"{t['cluster']}/{t['agent']}",
            _state(t),
            str(t["attempts"]),
            _time(t["created_at"]),
            escape((t["dead_reason"] or t["error"] or "")[:60]),
        )
    out.print(table)
    # where the next page starts, as the command that lists it
    for key, option, which in (
        ("next_after", "after", "newer"),
        ("next_before", "before", "older"),
    ):
        if page.get(key) is not None:
            again = [
                f"--{k} {v}" for k, v in (filters | {option: page[key]}).items() if v is not None
            ]
            err.print(f"{which}: fleetops tasks {' '.join(again)}", highlight=False, soft_wrap=True)


def _pages(url: str, path: str, cluster: str | None, agent: str | None) -> Iterator[Any]:
    """POST ``path`` (a bulk action on the tasks ``cluster`` and ``agent`` pick) a page
    at a time, each after the last one's ``next_after``, until there is no next."""
    params = {k: v for k, v in {"cluster": cluster, "agent": agent}.items() if v is not None}
    while True:
        page = call("POST", url, path, params=params)
        yield page
        if page["next_after"] is None:
            return
        params["after"] = str(page["next_after"])


def _cancel_all_queued(url: str, cluster: str, agent: str | None) -> None:
    """Every queued task of ``cluster`` (and ``agent``); print the ids cancelled, with
    the tasks they had sent."""
    cancelled: list[int] = []
    descendants: list[int] = []
    for page in _pages(url, "/api/v1/tasks/cancel-queued", cluster, agent):
        cancelled += page["tasks"]
        descendants += page["descendants_cancelled"]
    print_json(
        {"cancelled": len(cancelled), "tasks": cancelled, "descendants_cancelled": descendants}
    )


def _retry_all_dead(url: str, cluster: str | None, agent: str | None) -> None:
    """Every dead letter of ``cluster`` and ``agent``; print the ids queued again and
    how many."""
    retried = [
        i for page in _pages(url, "/api/v1/tasks/retry-dead", cluster, agent) for i in page["tasks"]
    ]
    print_json({"retried": len(retried), "tasks": retried})


#: The states each of ``tasks --retry`` and ``--cancel`` acts on, and what it says of
#: a task in another.
ACTION_STATES = {
    "retry": (
        ("dead",),
        "task {id} is {state}, not dead: only a dead letter can be retried (submit a new "
        "task to run it again)",
    ),
    "cancel": (
        ("queued", "running"),
        "task {id} is {state}, so it cannot be cancelled: only a queued or running task can",
    ),
}


def _refusals(url: str, retry: list[int], cancel: list[int]) -> int:
    """How many of the tasks to retry or cancel do not exist or are in a state the
    action does not take, each said on stderr: checked before any is acted on."""
    refused = 0
    for action, ids in (("retry", retry), ("cancel", cancel)):
        states, why = ACTION_STATES[action]
        for i in ids:
            try:
                state = call("GET", url, f"/api/v1/tasks/{i}")["state"]
                if state not in states:
                    fail(f"--{action}: " + why.format(id=i, state=state), EXIT_USAGE)
            except typer.Exit as exc:
                if exc.exit_code != EXIT_USAGE:
                    raise  # the control plane is not there: the rest would fail alike
                refused += 1
    return refused


def _queued_with(url: str, task_id: int, retried: set[int]) -> int | None:
    """The task of ``retried`` that ``task_id`` was queued again with (a dead letter's
    dead descendants are), if it is queued now and one of its ancestors is that task."""
    task = call("GET", url, f"/api/v1/tasks/{task_id}")
    if task["state"] != "queued":
        return None
    for _ in range(MAX_ANCESTORS):
        parent = task.get("parent_id")
        if parent is None:
            return None
        if parent in retried:
            return int(parent)
        task = call("GET", url, f"/api/v1/tasks/{parent}")
    return None


#: How far up a task's parents ``tasks --retry`` looks for one retried before it.
MAX_ANCESTORS = 64


def _retry_or_cancel(url: str, retry: list[int], cancel: list[int]) -> None:
    """Each task in turn, once every one is found in a state its action takes (else
    none is acted on: each refusal is said on stderr, and the exit code is 2); print
    those done, and exit 2 if any could not be done after all (a task that changed
    state meanwhile)."""
    if _refusals(url, retry, cancel):
        print_json([])  # none done
        fail("nothing was retried or cancelled: fix the ids above and run it again", EXIT_USAGE)
    done: list[dict[str, Any]] = []
    refused = 0
    gone_with: set[int] = set()  # cancelled with a task cancelled before them
    retried: set[int] = set()
    for action, ids in (("retry", retry), ("cancel", cancel)):
        for i in ids:
            if action == "cancel" and i in gone_with:
                continue
            if action == "retry" and retried and (ancestor := _queued_with(url, i, retried)):
                # a dead child is queued again with its parent: done already
                done.append({"id": i, "state": "queued", "queued_with": ancestor})
                continue
            try:
                answer: dict[str, Any] = call("POST", url, f"/api/v1/tasks/{i}/{action}")
                if action == "cancel" and not answer["cancelled"]:
                    state = call("GET", url, f"/api/v1/tasks/{i}")["state"]
                    why = ACTION_STATES["cancel"][1]
                    fail("--cancel: " + why.format(id=i, state=state), EXIT_USAGE)
            except typer.Exit as exc:
                if exc.exit_code != EXIT_USAGE:
                    raise
                refused += 1
                continue
            if action == "retry":
                retried.add(i)
                done.append({"id": i, "state": "queued"})
            else:  # the tasks it sent went with it
                descendants = answer.get("descendants_cancelled", [])
                gone_with.update(descendants)
                done.append({"id": i, "state": "cancelled", "descendants_cancelled": descendants})
    print_json(done)
    if refused:
        raise typer.Exit(EXIT_USAGE)


def readiness(
    api: str = typer.Option(None, help=API_HELP),
    json_output: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """The running fleet's production-readiness score, check by check."""
    report: dict[str, Any] = call("GET", api_url(api, None), "/api/v1/readiness")
    if json_output:
        print_json(report)
        return
    table = Table(
        title=f"production readiness: {report['readiness_score']}/100", title_justify="left"
    )
    for column in ("check", "weight", "", "why"):
        table.add_column(column)
    for c in report["readiness_checks"]:
        table.add_row(
            c["name"],
            str(c["weight"]),
            "[green]pass[/]" if c["passed"] else "[red]fail[/]",
            escape(c["why"]),
        )
    out.print(table)


def changes(
    limit: int = typer.Option(
        50, callback=_within(1, 1000), help="The newest this many: 1 to 1000."
    ),
    api: str = typer.Option(None, help=API_HELP),
    json_output: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """The change log: every deploy and apply, who, when, why and what."""
    rows = call("GET", api_url(api, None), "/api/v1/changes", params={"limit": limit})
    if json_output:
        print_json(rows)
        return
    table = Table(title_justify="left")
    for column in ("id", "when", "actor", "kind", "reason", "changed"):
        table.add_column(column)
    for r in rows:
        paths = [d["path"] for d in r["diff"] if d.get("op") != "note"]
        shown = ", ".join(paths[:4]) + (f" (+{len(paths) - 4})" if len(paths) > 4 else "")
        table.add_row(
            str(r["id"]), _time(r["at"]), escape(r["actor"]), r["kind"], escape(r["reason"]), shown
        )
    out.print(table)


def events(
    kind: str = typer.Option(None, help="Only this kind, e.g. worker.failed or task.cancelled."),
    cluster: str = typer.Option(None, help="Only this cluster's."),
    limit: int = typer.Option(
        50, callback=_within(1, 1000), help="The newest this many: 1 to 1000."
    ),
    api: str = typer.Option(None, help=API_HELP),
    json_output: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Fleet events: workers and recovery steps, clusters degraded, tasks cancelled and retried."""
    params: dict[str, Any] = {"limit": limit}
    params |= {k: v for k, v in {"kind": kind, "cluster": cluster}.items() if v is not None}
    page = call("GET", api_url(api, None), "/api/v1/events", params=params)
    if json_output:
        print_json(page["items"])
        return
    table = Table(title_justify="left")
    for column in ("id", "when", "kind", "cluster", "worker", "task", "data"):
        table.add_column(column)
    for e in page["items"]:
        data = ", ".join(f"{k}={v}" for k, v in e["data"].items())
        table.add_row(
            str(e["id"]),
            _time(e["at"]),
            e["kind"],
            escape(e["cluster"] or ""),
            escape(e["worker"] or ""),
            "" if e["task_id"] is None else str(e["task_id"]),
            escape(data[:80]),
        )
    out.print(table)


__all__ = ["PHASES"]


async def _run_load(
    plane: ControlPlane,
    target: str,
    payloads: list[Any],
    rate: float,
    kill_at: float | None,
    seed: int,
    json_output: bool,
) -> int:
    from ..control._load import run_load
    from ._common import print_mapping, progress_bar

    async with plane:
        with err.status("deploying…") if not json_output else contextlib.nullcontext():
            report = await plane.deploy()
        if not json_output:
            _print_report(report)
        if not report.deployment_successful:
            if json_output:
                print_json(report.as_dict())
            return EXIT_FAILURE
        if not json_output:
            out.print(f"API: [bold]{plane.api_url}[/]  (try: curl {plane.api_url}/api/v1/clusters)")
        with progress_bar(f"{target}") as update:
            result = await run_load(
                plane,
                target=target,
                payloads=payloads,
                rate=rate,
                kill_at=kill_at,
                seed=seed,
                progress=lambda done, total, note: update(done, total, note=note),
            )
    if json_output:
        print_json(result.as_dict())
    else:
        print_mapping("load report", result.as_dict())
    return 0 if result.unfinished == 0 else EXIT_FAILURE


#: The most tasks one ``fleetops load`` submits (--duration times --rate): its payloads
#: are made before the fleet is deployed, and are held in memory.
MAX_LOAD_TASKS = 100_000


def _load_payloads(
    spec: FleetSpec, workload: str, target: str, duration: str, rate: float, seed: int
) -> list[Any]:
    """Check load's options against ``spec`` and make its payloads, before anything is
    deployed: a mistake found after the deploy left a fleet's state behind it."""
    from ..control._load import load_workload
    from ..runtime._context import split_address

    cluster, agent = split_address(target, "")
    if cluster not in spec.clusters:
        raise ConfigError(
            "--target",
            target,
            f"write 'cluster/agent' with a cluster of the fleet: {', '.join(spec.clusters)}",
        )
    agents = [a.name for a in spec.clusters[cluster].agents]
    if agent not in agents:
        raise ConfigError("--target", target, f"cluster {cluster} runs {', '.join(agents)}")
    if not math.isfinite(rate):  # typer's range lets an infinity through
        raise ConfigError("--rate", rate, "give a finite number of tasks per second, e.g. 5")
    seconds = parse_duration(duration, "--duration")
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError("--duration", duration, "give a duration above zero, e.g. 60s")
    count = max(1, int(seconds * rate))
    if seconds * rate > MAX_LOAD_TASKS:
        raise ConfigError(
            "--duration",
            duration,
            f"at {rate:g} per second that is {seconds * rate:,.0f} tasks, more than "
            f"{MAX_LOAD_TASKS:,}: shorten --duration or lower --rate",
        )
    if spec.base_dir is not None and str(spec.base_dir) not in sys.path:
        sys.path.insert(0, str(spec.base_dir))
    generate = load_workload(workload)
    try:
        return list(generate(count, seed))
    except Exception as exc:  # the user's code: its error is theirs to see, not a traceback
        why = f"{type(exc).__name__}: {exc}"
        raise ConfigError("--workload", workload, f"making {count} payloads failed: {why}") from exc


def load(
    file: Path = typer.Argument(..., help=SPEC_HELP),
    workload: str = typer.Option(
        ..., help="'module:function' that answers (count, seed) payloads."
    ),
    target: str = typer.Option(..., help="'cluster/agent' the payloads go to."),
    duration: str = typer.Option("60s", help="How long to submit for."),
    rate: float = typer.Option(5.0, callback=_within(0.01), help="Tasks per second: 0.01 or more."),
    kill_worker_at: float = typer.Option(
        None,
        callback=_within(0.0, 1.0),
        help="SIGKILL one worker when this fraction is submitted: 0 to 1.",
    ),
    seed: int = typer.Option(0, help="Seed for the workload and the choice of victim."),
    api_port: int = typer.Option(None, callback=_port, help=API_PORT_HELP),
    json_output: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show runtime logs."),
) -> None:
    """Deploy FILE, drive a workload through it, optionally kill a worker, and report."""
    setup_logging(verbose, quiet_level=logging.CRITICAL)
    spec = load_or_exit(file)
    with user_errors():
        payloads = _load_payloads(spec, workload, target, duration, rate, seed)
        plane = ControlPlane(spec, spec_text=file.read_text(encoding="utf-8"), api_port=api_port)
        code = asyncio.run(
            _run_load(plane, target, payloads, rate, kill_worker_at, seed, json_output)
        )
    raise typer.Exit(code)


def logs(
    file: Path = typer.Argument(None, exists=True, help=FLEET_FILE_HELP),
    query: str = typer.Option(None, "-q", "--query", help="Text to look for."),
    level: str = typer.Option(None, help="Lowest level: debug, info, warning, error."),
    task_id: int = typer.Option(None, "--task", help="Only this task's records."),
    cluster: str = typer.Option(None, help="Only this cluster's records."),
    trace_id: str = typer.Option(None, "--trace", help="Only this trace's records."),
    limit: int = typer.Option(
        50, callback=_within(1, 100_000), help="How many (newest first): 1 to 100000."
    ),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new records."),
    json_output: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """Search the fleet's structured logs (every worker and the control plane)."""
    from ..telemetry._logsearch import LogFilter, follow_logs, search_logs

    log_dir = _fleet_base(file) / ".fleetops" / "logs"
    if not log_dir.is_dir():
        fail(f"no fleet logs in {log_dir}: run the fleet from here (or name its spec)", EXIT_USAGE)
    with user_errors():
        where = LogFilter(
            text=query, level=level, task_id=task_id, cluster=cluster, trace_id=trace_id
        )
    records = list(reversed(search_logs(log_dir, where, limit)))
    for record in records:
        _print_log(record, json_output)
    if follow:
        with contextlib.suppress(KeyboardInterrupt):
            for record in follow_logs(log_dir, where):
                _print_log(record, json_output)


#: Fields of a log record printed under its line: tracebacks (see runtime._worker, and
#: telemetry._logs for a record logged with exc_info), and lines that were not records
#: (telemetry._logsearch).
MULTILINE_FIELDS = ("traceback", "exception", "output")


def _print_log(record: dict[str, Any], json_output: bool) -> None:
    if json_output:
        print(json.dumps(record, default=str), flush=True)
        return
    level = str(record.get("level", "info"))
    colour = {"error": "red", "critical": "red", "warning": "yellow"}.get(level, "dim")
    extra = {
        k: v
        for k, v in record.items()
        if k not in ("ts", "level", "logger", "event", "source", *MULTILINE_FIELDS)
    }
    # values are the records' own text: "[Errno 2]" or "[/tmp]" is not markup
    fields = escape(" ".join(f"{k}={v}" for k, v in extra.items()))
    source, event = (escape(str(record.get(k, ""))) for k in ("source", "event"))
    out.print(
        f"{_time(record.get('ts'))} [{colour}]{level:<7}[/] {source} [bold]{event}[/] {fields}",
        highlight=False,
    )
    for name in MULTILINE_FIELDS:  # a traceback under its line, indented
        text = record.get(name)
        if text:
            out.print(
                escape(textwrap.indent(str(text).rstrip(), "    ")), style="dim", highlight=False
            )
