"""``fleetops chaos …``: experiments that prove recovery."""

from __future__ import annotations

import asyncio
import logging
from typing import NoReturn

import typer

from .._exceptions import ConfigError
from .._units import parse_duration
from ..chaos import CutStoreConfig, KillWorkersConfig, cut_store, kill_workers
from ..chaos._cut_store import check_cut_timing
from ..runtime._supervisor import DEFAULT_SPARES
from ._common import (
    EXIT_FAILURE,
    cancelled_by_sigterm,
    err,
    print_json,
    print_mapping,
    progress_bar,
    setup_logging,
    user_errors,
)

app = typer.Typer(
    help="Chaos experiments: inject faults, check nothing is lost.", no_args_is_help=True
)


@app.command("kill-workers")
def kill_workers_command(
    tasks: int = typer.Option(2000, min=1, help="Tasks to submit, each with one side effect."),
    workers: int = typer.Option(4, min=1, help="Worker processes."),
    kill_every: str = typer.Option("1s", help="Interval between SIGKILLs, e.g. 500ms or 1s."),
    work: str = typer.Option("500ms", help="Work per task before its side effect."),
    import_time: str = typer.Option(
        "0s",
        help="CPU time the agents' module takes to import in each new worker, as an "
        "agent importing a large SDK would, e.g. 2s.",
    ),
    concurrency: int = typer.Option(25, min=1, help="Concurrent tasks per worker."),
    stop_one: bool = typer.Option(True, help="Also SIGSTOP one worker (a hang)."),
    spares: int = typer.Option(
        DEFAULT_SPARES, min=0, help="Warm spare workers the supervisor keeps (0: cold starts)."
    ),
    store: str = typer.Option(
        "", help="Store URL, or 'sqlite' (the default): a temporary SQLite file."
    ),
    seed: int = typer.Option(None, help="Seed for the choice of victims."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show runtime logs."),
) -> None:
    """SIGKILL a random worker every interval under load; report lost and duplicated work.

    Exits 1 when the steady-state hypothesis fails: a task lost, or a side effect
    applied twice or missing; and when the work was done before the first kill or
    stop (nothing was tested).
    """
    setup_logging(verbose, quiet_level=logging.CRITICAL)  # the failures are the point
    with user_errors():
        interval = parse_duration(kill_every, "--kill-every")
        if interval <= 0:
            raise ConfigError(
                "--kill-every", kill_every, "use an interval above 0, e.g. 500ms or 1s"
            )
        config = KillWorkersConfig(
            tasks=tasks,
            workers=workers,
            kill_every=interval,
            stop_one=stop_one,
            spares=spares,
            work_s=parse_duration(work, "--work"),
            import_s=parse_duration(import_time, "--import-time"),
            concurrency=concurrency,
            # 'sqlite' as in 'bench queue', not a file of that name here
            store_url=None if store in ("", "sqlite") else store,
            seed=seed,
        )
        with progress_bar("tasks terminal") as update:
            result = asyncio.run(
                cancelled_by_sigterm(
                    kill_workers(
                        config, progress=lambda d, t, k: update(d, t, note=f"{k} workers killed")
                    )
                )
            )
    summary = result.summary()
    if json_output:
        print_json(summary)
    else:
        print_mapping("chaos kill-workers", summary)
    if result.lost or result.duplicate_effects or result.missing_effects:
        err.print("[bold red]steady state violated:[/] work was lost or duplicated")
        if result.timed_out:
            err.print(
                f"{result.lost} task(s) were still open when the run ended at its time "
                f"limit ({result.elapsed_s:.0f} s): with a kill every {kill_every} the "
                "fleet may not keep up; a longer interval tells loss from slowness"
            )
        raise typer.Exit(EXIT_FAILURE)
    if not result.faults_injected:
        _no_fault(result.elapsed_s, "kill", f"--kill-every {kill_every}")


@app.command("cut-store")
def cut_store_command(
    store: str = typer.Option(
        ..., help="The fleet's PostgreSQL database: postgresql://user@host:port/db."
    ),
    tasks: int = typer.Option(1000, min=1, help="Tasks to submit, each with one side effect."),
    workers: int = typer.Option(2, min=1, help="Worker processes."),
    cut_every: str = typer.Option("3s", help="A cut begins this often, e.g. 2s."),
    cut_for: str = typer.Option("1s", help="How long each cut lasts, e.g. 500ms."),
    work: str = typer.Option("200ms", help="Work per task before its side effect."),
    concurrency: int = typer.Option(25, min=1, help="Concurrent tasks per worker."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show runtime logs."),
) -> None:
    """Cut the network between the fleet and its database every interval under load
    (every connection closed, new ones refused); report lost and duplicated work.

    Exits 1 when the steady-state hypothesis fails: a task lost, a side effect
    applied twice or missing, or a worker failed though the cuts were shorter than
    its lease (workers ride a cut out; one cut off for its lease's length stops);
    and when the work was done before the first cut (nothing was tested).
    """
    setup_logging(verbose, quiet_level=logging.CRITICAL)  # the failures are the point
    with user_errors():
        every = parse_duration(cut_every, "--cut-every")
        length = parse_duration(cut_for, "--cut-for")
        check_cut_timing(every, length, (cut_every, cut_for))
        config = CutStoreConfig(
            store_url=store,
            tasks=tasks,
            workers=workers,
            cut_every=every,
            cut_for=length,
            work_s=parse_duration(work, "--work"),
            concurrency=concurrency,
        )
        with progress_bar("tasks terminal") as update:
            result = asyncio.run(
                cancelled_by_sigterm(
                    cut_store(config, progress=lambda d, t, k: update(d, t, note=f"{k} cuts"))
                )
            )
    if json_output:
        print_json(result.summary())
    else:
        print_mapping("chaos cut-store", result.summary())
    if not result.holds:
        err.print("[bold red]steady state violated:[/] ", end="")
        if result.lost or result.duplicate_effects or result.missing_effects:
            err.print("work was lost or duplicated", end="")
        else:
            err.print(
                f"{result.worker_failures} worker(s) failed though every cut was shorter "
                "than a worker's lease",
                end="",
            )
        err.print(f"; the fleet's logs are kept in {result.logs}", markup=False)
        raise typer.Exit(EXIT_FAILURE)
    if not result.faults_injected:
        _no_fault(result.elapsed_s, "cut", f"--cut-every {cut_every}")


def _no_fault(elapsed_s: float, fault: str, interval: str) -> NoReturn:
    """Exit 1 for a run that ended before its first fault: it held, but proved nothing."""
    err.print("[bold red]no fault injected:[/] ", end="")
    err.print(
        f"the work was done in {elapsed_s:.1f} s, before the first {fault} "
        f"({interval}), so the run proves nothing; give it more work (--tasks, --work) "
        f"or {fault} sooner (a shorter {interval.split()[0]})",
        markup=False,
    )
    raise typer.Exit(EXIT_FAILURE)
