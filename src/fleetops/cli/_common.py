"""What every command shares: consoles, error reporting, JSON output, progress."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import signal
import sys
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .._exceptions import FleetOpsError, UsageError
from ..telemetry import configure_json_logging

out = Console()
err = Console(stderr=True)

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

#: Exit status for a user's mistake (bad spec, bad argument), as argparse and typer do.
EXIT_USAGE = 2
#: Exit status when something the command depends on failed.
EXIT_FAILURE = 1


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    # the message quotes what the user gave: "[/x]" in it is text, not markup
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn fleetops errors into a clear message and an exit status, not a traceback."""
    try:
        yield
    except UsageError as exc:
        fail(str(exc), EXIT_USAGE)
    except FleetOpsError as exc:
        fail(str(exc), EXIT_FAILURE)


def reported(command: Callable[P, R]) -> Callable[P, R]:
    """``command`` with the fleetops errors it lets through reported as
    :func:`user_errors` does: a user's mistake found outside a command's own
    ``user_errors`` block (reading a fleet's state directory, say) is still no
    traceback."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        with user_errors():
            return command(*args, **kwargs)

    return run


#: Exit status of a command stopped by SIGTERM, as a shell reports a process it killed.
EXIT_TERMINATED = 128 + signal.SIGTERM


async def cancelled_by_sigterm(work: Coroutine[Any, Any, T]) -> T:
    """Await ``work``; SIGTERM cancels it as Ctrl-C cancels ``asyncio.run``'s task, so
    its ``finally`` blocks and context managers clean up (stopping workers, deleting
    temporary directories), and the command then exits with :data:`EXIT_TERMINATED`."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    terminated = False

    def on_sigterm() -> None:
        nonlocal terminated
        terminated = True
        task.cancel()

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    try:
        return await work
    except asyncio.CancelledError:
        if terminated:
            raise typer.Exit(EXIT_TERMINATED) from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def setup_logging(verbose: bool, quiet_level: int = logging.ERROR) -> None:
    """JSON logs on stderr: everything from INFO with --verbose, else ``quiet_level`` up."""
    configure_json_logging(logging.INFO if verbose else quiet_level, sys.stderr)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, default=str) + "\n")
    sys.stdout.flush()


def print_mapping(title: str, data: dict[str, Any]) -> None:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("name", style="bold")
    table.add_column("value", justify="right")
    for key, value in data.items():
        table.add_row(key, "—" if value is None else escape(str(value)))
    out.print(table)


@contextmanager
def progress_bar(description: str) -> Iterator[Callable[..., None]]:
    """A progress bar on stderr; yields ``update(done, total, **fields)``. Drawn only
    on a terminal: redirected to a file or a pipe there is nothing to draw it on, and
    its refresh thread would only take time from the command being run."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )
    task_id = progress.add_task(description, total=None, note="")

    def update(done: int, total: int, note: str = "", description: str | None = None) -> None:
        fields: dict[str, Any] = {"completed": done, "total": total, "note": note}
        if description is not None:
            fields["description"] = description
        progress.update(task_id, **fields)

    with progress:
        yield update
