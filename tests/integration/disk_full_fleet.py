"""A fleet on a small file system that fills up, run by test_disk_full.py in a mount
namespace of its own: ``python disk_full_fleet.py STORE_DIR SIDE_DIR TASKS``.

STORE_DIR is a small file system (a tmpfs) for the store alone; SIDE_DIR an ordinary
one for the effect ledger and the worker logs. Prints one JSON object:

1. ``steady``: a worker's queue client (submit, claim, complete) runs TASKS tasks
   through the store as fast as it can; the errors it met and the largest the WAL grew.
2. ``full``: a supervised fleet (2 workers, an agent with one journaled side effect
   each) works through 1,500 tasks while another file takes every free byte for
   2 seconds and is then deleted. What became of the tasks and their effects, the
   error a submit got while the disk was full, and whether one was accepted after.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from fleetops import StoreError
from fleetops._clock import SystemClock
from fleetops.chaos._agents import LEDGER_ENV
from fleetops.chaos._ledger import Ledger
from fleetops.queue import QueueClient
from fleetops.runtime import WorkerSettings
from fleetops.runtime._supervisor import ClusterPlan, RestartPolicy, Supervisor
from fleetops.store import TERMINAL_STATES, Complete, NewTask

FLEET_TASKS = 1500


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


async def steady(store: Path, tasks: int) -> dict[str, Any]:
    url = f"sqlite:///{store / 'steady.db'}?durability=full"
    wal = Path(f"{store / 'steady.db'}-wal")
    errors: list[str] = []
    done = largest = 0
    async with QueueClient(url, inline=True) as client:
        while done < tasks and len(errors) < 20:
            try:
                await client.submit_many([NewTask("c", "a", '"' + "p" * 300 + '"')] * 50)
                claimed = await client.claim("w", ["c"], 50, 30)
                outcomes = [Complete(t.id, t.epoch, '"ok"', "w", time.time()) for t in claimed]
                await asyncio.gather(*(client.apply(op) for op in outcomes))
                done += len(claimed)
            except StoreError as exc:
                errors.append(str(exc))
                await asyncio.sleep(0.01)
            largest = max(largest, _size(wal))
    _remove(store / "steady.db")  # the fleet's store gets the room
    return {"done": done, "errors": errors[:3], "largest_wal": largest}


def _remove(db: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-spans"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{db}{suffix}")


def _fill(path: Path) -> None:
    with path.open("wb") as filler:
        try:
            while True:
                filler.write(b"x" * 65536)
                filler.flush()
        except OSError:
            pass


async def full(store: Path, side: Path) -> dict[str, Any]:
    clock = SystemClock()
    url = f"sqlite:///{store / 'fleet.db'}"
    ledger = side / "ledger.db"
    Ledger(ledger).close()
    env = dict(os.environ)
    env[LEDGER_ENV] = str(ledger)
    plan = ClusterPlan(
        name="c",
        agents=("fleetops.chaos._agents:effectful",),
        replicas=2,
        worker=WorkerSettings(concurrency=50, shutdown_grace=2.0),
    )
    kinds: list[str] = []
    supervisor = Supervisor(
        url,
        [plan],
        clock=clock,
        restart=RestartPolicy(intensity=1000),
        on_event=lambda event: kinds.append(event.kind),
        env=env,
        log_dir=side / "logs",
    )
    stop = asyncio.Event()
    refused = accepted_after = None
    open_tasks: dict[str, int] = {}
    async with QueueClient(url, clock=clock) as client, asyncio.TaskGroup() as tg:
        tg.create_task(supervisor.run(stop))
        await supervisor.ready.wait()
        payload = json.dumps({"work_s": 0.2})
        ids = [
            s.id
            for s in await client.submit_many([NewTask("c", "effectful", payload)] * FLEET_TASKS)
        ]
        await asyncio.sleep(0.5)
        _fill(store / "filler")
        full_until = time.monotonic() + 2.0
        while time.monotonic() < full_until:  # a submit may still fit in the WAL's file
            try:
                ids.append((await client.submit(NewTask("c", "effectful", payload))).id)
            except StoreError as exc:
                refused = str(exc)
            await asyncio.sleep(0.1)
        (store / "filler").unlink()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if accepted_after is None:
                    accepted_after = (await client.submit(NewTask("c", "effectful", payload))).id
                    ids.append(accepted_after)
                counts = await client.run(client.store.count_tasks)
                open_tasks = {s: n for (_, _, s), n in counts.items() if s not in TERMINAL_STATES}
                if not open_tasks:
                    break
            except StoreError:
                pass
            await asyncio.sleep(0.2)
        stop.set()
    async with QueueClient(url) as client:
        records = await client.run(client.store.get_tasks, ids)
    book = Ledger(ledger)
    report = book.report()
    applied = book.applied_task_ids()
    book.close()
    conn = sqlite3.connect(str(store / "fleet.db"))
    integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    conn.close()
    states: dict[str, int] = {}
    for record in records:
        states[record.state] = states.get(record.state, 0) + 1
    return {
        "submitted": len(ids),
        "states": states,
        "open": open_tasks,
        "duplicate_effects": report.duplicate_effects,
        "missing_effects": sum(
            1 for r in records if r.state == "succeeded" and r.id not in applied
        ),
        "refused": refused,
        "accepted_after": accepted_after is not None,
        "worker_failures": kinds.count("worker.failed"),
        "integrity": integrity,
    }


async def main(store: Path, side: Path, tasks: int) -> None:
    out = {"steady": await steady(store, tasks), "full": await full(store, side)}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])))
