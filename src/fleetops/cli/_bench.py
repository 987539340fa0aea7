"""``fleetops bench …``: benchmarks with JSON output."""

from __future__ import annotations

import asyncio

import typer

from ..bench import QueueBenchConfig, bench_queue
from ..bench._queue import summarize_rounds
from ..runtime._gc import tune_for_serving
from ._common import (
    cancelled_by_sigterm,
    print_json,
    print_mapping,
    progress_bar,
    setup_logging,
    user_errors,
)

app = typer.Typer(help="Measure fleetops on this machine (JSON with --json).", no_args_is_help=True)


@app.command("queue")
def queue(
    tasks: int = typer.Option(20000, min=1, help="Tasks in the throughput phase."),
    inflight: int = typer.Option(1000, min=1, help="Concurrent handlers across all workers."),
    work: str = typer.Option("sleep:10ms", help="'noop' or 'sleep:DURATION' per task."),
    store: str = typer.Option("sqlite", help="'sqlite' (a temporary file) or a postgresql:// URL."),
    durability: str | None = typer.Option(
        None,
        help="SQLite durability: 'full' (the default) or 'normal'. Not with a PostgreSQL "
        "store, whose durability is its server's synchronous_commit.",
    ),
    workers: int = typer.Option(2, min=1, help="Worker processes."),
    overhead_rate: float | None = typer.Option(
        None,
        min=1.0,
        help="Tasks/s in the overhead phase (default: half the measured maximum).",
    ),
    overhead_seconds: float = typer.Option(
        5.0,
        min=0.5,
        help="Length of the overhead phase in seconds: it submits its rate's tasks a "
        "second for this long (at least 50 tasks), however many --tasks are.",
    ),
    event_loop: str = typer.Option(
        "auto", help="Workers' event loop: 'auto' (uvloop where installed), 'uvloop', 'asyncio'."
    ),
    rounds: int = typer.Option(
        1,
        min=1,
        help="Run the whole benchmark this many times, each on a new store, and report "
        "the median of each number and the range of the main ones.",
    ),
    open_loop: bool = typer.Option(
        False,
        "--open-loop",
        help="Overhead phase: submit every millisecond on a fixed schedule, not waiting "
        "for earlier submits to be acknowledged.",
    ),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show runtime logs."),
) -> None:
    """Throughput and per-task overhead of the durable queue on real worker processes."""
    setup_logging(verbose)
    config = QueueBenchConfig(
        tasks=tasks,
        inflight=inflight,
        work=work,
        store=store,
        durability=durability,
        workers=workers,
        overhead_rate=overhead_rate,
        overhead_seconds=overhead_seconds,
        event_loop=event_loop,
        open_loop=open_loop,
    )
    results = []
    with user_errors(), progress_bar("throughput") as update:
        for n in range(rounds):
            label = f"round {n + 1}/{rounds}: " if rounds > 1 else ""

            def report(phase: str, done: int, total: int, label: str = label) -> None:
                update(done, total, description=label + phase)

            tune_for_serving()  # as a long-running submitter would be
            results.append(asyncio.run(cancelled_by_sigterm(bench_queue(config, progress=report))))
    summary = summarize_rounds(results)
    if json_output:
        print_json(summary)
    else:
        print_mapping("bench queue", summary)


@app.command("telemetry")
def telemetry(
    tasks: int = typer.Option(30000, min=100, help="Tasks per throughput round."),
    rounds: int = typer.Option(5, min=1, help="Rounds of (off, on); the median counts."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show runtime logs."),
) -> None:
    """What metrics and traces cost: throughput off vs on, scrape time, history ingest."""
    from ..bench._telemetry import bench_telemetry

    setup_logging(verbose)
    with user_errors(), progress_bar("throughput") as update:

        def report(phase: str, done: int, total: int) -> None:
            update(done, total, description=phase)

        result = asyncio.run(bench_telemetry(tasks=tasks, rounds=rounds, progress=report))
    if json_output:
        print_json(result.as_dict())
    else:
        print_mapping("bench telemetry", result.as_dict())
