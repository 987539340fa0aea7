"""What every chaos experiment does around its fault: a ledger standing in for the
outside world, the work (tasks of the effectful agent) submitted, the wait for it
to end, and the tally of what was lost or done twice."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .._clock import SystemClock
from ..queue import QueueClient
from ..runtime import Supervisor
from ..store import TERMINAL_STATES, NewTask, TaskRecord
from ._agents import IMPORT_SECONDS_ENV, LEDGER_ENV
from ._ledger import Ledger

#: the agent every experiment runs: some work, then one journaled side effect
AGENT_ENTRYPOINT = "fleetops.chaos._agents:effectful"


def new_ledger(workdir: Path, import_s: float = 0.0) -> tuple[Path, dict[str, str]]:
    """A new ledger file in ``workdir``, and the environment that points workers at
    it (and has the agents' module take ``import_s`` of CPU to import)."""
    path = workdir / "ledger.db"
    Ledger(path).close()
    env = dict(os.environ)
    env[LEDGER_ENV] = str(path)
    env[IMPORT_SECONDS_ENV] = repr(import_s)
    return path, env


async def submit_effectful(
    client: QueueClient, cluster: str, tasks: int, work_s: float
) -> list[int]:
    """Submit ``tasks`` tasks of the effectful agent to ``cluster``; answer their ids."""
    payload = json.dumps({"work_s": work_s})
    submitted: list[int] = []
    for start in range(0, tasks, 500):
        batch = [
            NewTask(queue=cluster, agent="effectful", payload=payload)
            for _ in range(min(500, tasks - start))
        ]
        submitted.extend(s.id for s in await client.submit_many(batch))
    return submitted


async def drive(
    supervisor: Supervisor,
    store_url: str,
    cluster: str,
    fault: Callable[[], Coroutine[Any, Any, None]],
    *,
    tasks: int,
    work_s: float,
    time_limit: float,
    clock: SystemClock,
    progress: Callable[[int, int], None] | None = None,
    fault_over: Callable[[], None] | None = None,
) -> tuple[list[int], bool]:
    """Start the supervisor's fleet, submit ``tasks`` tasks of ``work_s`` seconds' work,
    run ``fault()`` alongside until every task is terminal or ``time_limit`` passes,
    call ``fault_over`` and stop the fleet. Answers the tasks' ids, and whether the
    time limit cut the run off. ``progress(done, total)`` is told as it goes."""
    stop = asyncio.Event()
    async with QueueClient(store_url, clock=clock) as client, asyncio.TaskGroup() as tg:
        tg.create_task(supervisor.run(stop), name="supervisor")
        await supervisor.ready.wait()
        submitted = await submit_effectful(client, cluster, tasks, work_s)
        injector = tg.create_task(fault(), name="fault")
        timed_out = await wait_terminal(
            client,
            cluster,
            len(submitted),
            time_limit,
            None if progress is None else lambda done: progress(done, len(submitted)),
        )
        injector.cancel()
        if fault_over is not None:
            fault_over()
        stop.set()
    return submitted, timed_out


async def wait_terminal(
    client: QueueClient,
    cluster: str,
    total: int,
    time_limit: float,
    progress: Callable[[int], None] | None = None,
) -> bool:
    """Wait until ``total`` tasks of ``cluster`` are terminal, telling ``progress`` how
    many are as it goes; True if ``time_limit`` seconds passed first."""
    try:
        async with asyncio.timeout(time_limit):
            while True:
                counts = await client.run(client.store.count_tasks)
                done = sum(
                    n for (q, _, s), n in counts.items() if q == cluster and s in TERMINAL_STATES
                )
                if progress is not None:
                    progress(done)
                if done >= total:
                    return False
                await asyncio.sleep(0.1)
    except TimeoutError:
        return True


@dataclass(slots=True)
class Tally:
    """What became of a run's tasks and their side effects (the first fields of
    every experiment's result)."""

    submitted: int
    succeeded: int
    dead_lettered: int
    #: tasks not terminal at the end
    lost: int
    #: side effects applied more than once at the receiver (must be 0)
    duplicate_effects: int
    #: succeeded tasks whose side effect the receiver never got (must be 0)
    missing_effects: int
    #: calls of an effect beyond its first (a crash between the effect and its
    #: journal entry; the receiver's idempotency key absorbs them)
    effect_reexecutions: int
    #: tasks that ran more than once (their lease was lost or revoked)
    redelivered_tasks: int

    def counts(self) -> dict[str, Any]:
        """The fields, to build an experiment's result from: ``Result(**t.counts(), …)``."""
        return {f.name: getattr(self, f.name) for f in fields(Tally)}


def tally(submitted: Sequence[int], records: Sequence[TaskRecord], ledger_path: Path) -> Tally:
    """Count the run's outcome from its tasks' ``records`` and its ledger."""
    ledger = Ledger(ledger_path)
    try:
        report = ledger.report()
        applied_ids = ledger.applied_task_ids()
    finally:
        ledger.close()
    succeeded = [r for r in records if r.state == "succeeded"]
    return Tally(
        submitted=len(submitted),
        succeeded=len(succeeded),
        dead_lettered=sum(1 for r in records if r.state == "dead"),
        lost=len(submitted) - sum(1 for r in records if r.state in TERMINAL_STATES),
        duplicate_effects=report.duplicate_effects,
        missing_effects=sum(1 for r in succeeded if r.id not in applied_ids),
        effect_reexecutions=report.reexecutions,
        redelivered_tasks=sum(1 for r in records if r.redeliveries > 0),
    )
