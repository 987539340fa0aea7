"""One trace follows a request across clusters and redeliveries; logs carry its ids."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest

from _polling import wait_until
from fleetops import Context, RetryPolicy, TaskInfo
from fleetops._clock import Clock, VirtualClock
from fleetops.control import ControlPlane
from fleetops.queue import QueueClient
from fleetops.runtime import Worker, WorkerSettings, agent
from fleetops.spec import load_spec
from fleetops.store import Complete, Fail, NewTask, Operation, Store
from fleetops.telemetry import JsonFormatter, MetricSet, catalog, new_traceparent

ATTEMPTS: dict[int, int] = {}
QUEUED = ("triage", "classify", "queued")
SUCCEEDED = ("triage", "classify", "succeeded")


@agent(name="front", retry=RetryPolicy(max_attempts=3, backoff_base=0.0))
async def front(task: TaskInfo, ctx: Context) -> Any:
    ctx.log.info("front.started")
    answer = await ctx.call("back/answer", {"q": task.payload})
    ATTEMPTS[task.id] = ATTEMPTS.get(task.id, 0) + 1
    if ATTEMPTS[task.id] == 1:
        raise RuntimeError("first attempt fails after its child answered")
    ctx.report_reasoning(4)
    return answer


@agent(name="answer")
async def answer(task: TaskInfo, ctx: Context) -> Any:
    reply = await ctx.llm([{"role": "user", "content": "hello"}])
    async with ctx.tool("search_kb", "call-1"):
        await asyncio.sleep(0)
    return {"len": len(reply.content or "")}


def test_trace_crosses_clusters_and_survives_redelivery(sqlite_url: str) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("fleetops")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)

    async def scenario() -> None:
        async with QueueClient(sqlite_url) as client:
            settings = WorkerSettings(telemetry_interval=0.1, shutdown_grace=1.0)
            workers = [
                Worker(
                    client,
                    worker_id="wf",
                    cluster="front",
                    settings=settings,
                    agents={"front": front.__fleetops_agent__},
                ),  # type: ignore[attr-defined]
                Worker(
                    client,
                    worker_id="wb",
                    cluster="back",
                    settings=settings,
                    agents={"answer": answer.__fleetops_agent__},
                ),  # type: ignore[attr-defined]
            ]
            traceparent = new_traceparent()
            trace_id = traceparent.split("-")[1]
            stop = asyncio.Event()
            async with asyncio.TaskGroup() as tg:
                for w in workers:
                    tg.create_task(w.run(stop))
                sub = await client.submit(
                    NewTask(
                        "front", "front", '"why?"', headers=json.dumps({"traceparent": traceparent})
                    )
                )

                async def done() -> bool:
                    record = await client.run(client.store.get_task, sub.id)
                    return record is not None and record.state == "succeeded"

                await wait_until(done, within=20)
                stop.set()
            spans = await client.run(client.store.get_spans, trace_id, None, 100)
            names = sorted(s[3] for s in spans)
            # two attempts of the parent, one child (found again, not re-sent), its LLM
            # call and its tool run: all in the caller's trace
            assert names.count("invoke_agent front") == 2
            assert names.count("invoke_agent answer") == 1
            assert any(n.startswith("chat ") for n in names)
            assert "execute_tool search_kb" in names
            assert {s[0] for s in spans} == {trace_id}
            by_id = {s[1]: s for s in spans}
            child = next(s for s in spans if s[3] == "invoke_agent answer")
            assert by_id[child[2]][3] == "invoke_agent front"  # parented by the caller
            chat = next(s for s in spans if s[3].startswith("chat "))
            attributes = json.loads(chat[11])
            assert attributes["gen_ai.operation.name"] == "chat"
            assert attributes["gen_ai.provider.name"] == "simulated"
            assert attributes["gen_ai.usage.input_tokens"] > 0
            # metrics from both workers reached the store
            rows = await client.run(client.store.get_telemetry)
            assert {r[0] for r in rows} == {"wf", "wb"}
            front_metrics = json.loads(next(r[3] for r in rows if r[0] == "wf"))
            assert catalog.REASONING_CHAIN_LENGTH.name in front_metrics["h"]
            back_metrics = json.loads(next(r[3] for r in rows if r[0] == "wb"))
            assert catalog.MESSAGE_DELIVERY_LATENCY.name in back_metrics["h"]

            records = [json.loads(line) for line in stream.getvalue().splitlines()]
            started = [r for r in records if r["event"] == "front.started"]
            assert len(started) == 2
            assert all(r["trace_id"] == trace_id for r in started)
            assert all(r["task_id"] == sub.id and r["cluster"] == "front" for r in started)

    try:
        asyncio.run(scenario())
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def _plane(tmp_path: Path, clock: Clock | None = None, extra: str = "") -> ControlPlane:
    """A control plane of a one-cluster fleet in ``tmp_path``, not deployed: give it
    a client to talk to its store."""
    (tmp_path / "fleet.yaml").write_text(
        "fleet: {name: demo}\n"
        "clusters:\n"
        "  triage:\n"
        "    agents:\n"
        '      - {name: classify, entrypoint: "agents.triage:classify"}\n' + extra,
        encoding="utf-8",
    )
    return ControlPlane(load_spec(tmp_path / "fleet.yaml"), serve_api=False, clock=clock)


def test_the_control_plane_drops_spans_and_gone_workers_logs_after_the_high_retention(
    tmp_path: Path,
) -> None:
    """Spans, and the log files and rows of gone workers, are kept as long as raw
    metric history (observability.retention.high), events as long as any
    (retention.low), then
    dropped by the control plane's once-a-minute maintenance: without it the span
    file, the log directory and the event table only grow."""
    plane = _plane(
        tmp_path, extra="observability:\n  retention: {high: 1h, medium: 7d, low: 30d}\n"
    )

    def span(n: int, age: float) -> tuple[Any, ...]:
        start = time.time() - age
        return (
            f"{n:032x}",
            f"{n:016x}",
            None,
            "s",
            "INTERNAL",
            start,
            start + 1,
            "OK",
            None,
            "triage",
            "classify",
            "{}",
        )

    async def main() -> tuple[int, int, int]:
        async with QueueClient(plane.store_url) as client:
            plane.client = client
            await client.run(client.store.put_spans, [span(1, 7200), span(2, 3000)])
            plane.log_dir.mkdir(parents=True)
            for name, age in (("triage-0-old", 7200), ("triage-1-new", 60)):
                (plane.log_dir / f"{name}.log").write_text("{}\n")
                os.utime(plane.log_dir / f"{name}.log", (time.time() - age,) * 2)
            for age in (31 * 86400, 29 * 86400):  # events go after retention.low (30d)
                await client.run(
                    client.store.record_event, "worker.failed", time.time() - age, "triage"
                )
            for name, age in (("triage-0-old", 7200), ("triage-1-new", 60), ("triage-2", 0)):
                await client.run(
                    client.store.register_worker, name, "triage", 1, "h", 4, time.time() - 9000
                )
                if age:  # stopped that long ago; triage-2 still runs
                    await client.run(
                        client.store.set_worker_state, name, "stopped", time.time() - age
                    )
            dropped = await plane.maintain()
            # the row of a worker gone for retention.high goes too
            workers = await client.run(client.store.list_workers)
            assert [w.id for w in workers] == ["triage-1-new", "triage-2"]
            # a worker's log file goes with its spans (no worker is live here)
            assert [p.name for p in plane.log_dir.iterdir()] == ["triage-1-new.log"]
            events = await client.run(client.store.list_events)
            assert [round((time.time() - e.at) / 86400) for e in events] == [29]
            kept = await client.run(client.store.get_spans, f"{2:032x}")
            gone = await client.run(client.store.get_spans, f"{1:032x}")
            return dropped, len(kept), len(gone)

    assert asyncio.run(main()) == (1, 1, 0)


def test_the_control_plane_deletes_finished_tasks_kept_longer_than_the_store_keeps_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without it the task table grows by every task a fleet ever ran: succeeded
    and cancelled tasks go after store.keep_finished, dead letters after keep_dead,
    a few to a transaction, started by the once-a-minute maintenance."""
    monkeypatch.setattr("fleetops.control._plane.PRUNE_TASKS", 3)  # several transactions
    plane = _plane(tmp_path, extra="store: {keep_finished: 1h, keep_dead: 2h}\n")
    now = time.time()

    def finished(store: Store, ended: float, dead: bool = False) -> int:
        [task] = store.submit([NewTask("triage", "classify", "{}")], ended - 1)
        [held] = store.claim("w", ["triage"], 1, ended - 1, 30)
        end: Operation = Complete(task.id, held.epoch, "1", "w")
        if dead:
            end = Fail(task.id, held.epoch, "x", "w", None)
        assert store.apply([end], ended)[0].ok
        return task.id

    def fleet(store: Store) -> tuple[list[int], list[int]]:
        gone = [finished(store, now - 7200) for _ in range(7)]
        gone.append(finished(store, now - 3 * 3600, dead=True))
        kept = [finished(store, now - 600) for _ in range(2)]
        kept.append(finished(store, now - 5400, dead=True))
        kept.append(store.submit([NewTask("triage", "classify", "{}")], now - 9000)[0].id)
        return gone, kept

    async def main() -> None:
        async with plane, QueueClient(plane.store_url) as client:
            plane.client = client
            gone, kept = await client.run(fleet, client.store)

            async def only_kept_left() -> bool:
                left = await client.run(client.store.get_tasks, [*gone, *kept])
                return [t.id for t in left] == kept

            await plane.maintain()
            await wait_until(only_kept_left)  # the deleting goes on in the background
            plane.client = None

    asyncio.run(main())


def test_task_counts_are_fresh_for_open_tasks_and_recount_finished_ones_only_when_due(
    tmp_path: Path,
) -> None:
    clock = VirtualClock()
    plane = _plane(tmp_path, clock)

    async def main() -> None:
        async with QueueClient(plane.store_url, clock=clock) as client:
            plane.client = client
            store = client.store

            async def finish_one() -> None:
                [task] = await client.run(store.claim, "w", ["triage"], 1, clock.now(), 30.0)
                done = Complete(task.id, task.epoch, "null", "w")
                assert (await client.run(store.apply, [done], clock.now()))[0].ok

            def counts(got: dict[tuple[str, str, str], int]) -> tuple[int, int]:
                return got.get(QUEUED, 0), got.get(SUCCEEDED, 0)

            await client.submit_many([NewTask("triage", "classify") for _ in range(3)])
            await finish_one()
            assert counts(await plane.task_counts()) == (2, 1)
            await finish_one()
            await client.submit(NewTask("triage", "classify"))
            # the open tasks are counted again, the finished ones not yet
            assert counts(await plane.task_counts()) == (2, 1)
            clock.advance(1.0)  # FINISHED_RECOUNT_MIN
            assert counts(await plane.task_counts()) == (2, 2)
            # a count that took 0.1 s is taken again 5 s later, not sooner
            await finish_one()
            plane._finished_cost = 0.1
            clock.advance(4.9)
            assert counts(await plane.task_counts()) == (1, 2)
            clock.advance(0.1)
            assert counts(await plane.task_counts()) == (1, 3)

    asyncio.run(main())


def test_snapshots_of_gone_workers_fold_into_one_per_cluster_and_sum_the_same(
    tmp_path: Path,
) -> None:
    clock = VirtualClock()
    plane = _plane(tmp_path, clock)
    now = clock.now()

    def snapshot(done: int, waits: list[float]) -> str:
        m = MetricSet()
        m.inc(catalog.TASKS_FINISHED, ("triage", "classify", "succeeded"), done)
        for wait in waits:
            m.observe(catalog.QUEUE_WAIT, ("triage", "classify"), wait)
        m.set(catalog.AGENT_UTILIZATION, ("triage", "w"), 0.5)
        return json.dumps(m.snapshot())

    def sums(rows: list[tuple[str, str, float, str]]) -> dict[str, list[str]]:
        """Every counter and histogram series of the merged rows, in a set order."""
        merged = MetricSet.merge(json.loads(r[3]) for r in rows).snapshot()
        return {
            name: sorted(json.dumps(series) for series in entries)
            for kind in ("c", "h")
            for name, entries in merged[kind].items()
        }

    async def main() -> None:
        async with QueueClient(plane.store_url, clock=clock) as client:
            plane.client = client
            store = client.store

            async def write(worker: str, state: str, age: float, data: str) -> None:
                await client.run(store.register_worker, worker, "triage", 1, "h", 4, now - 900)
                if state != "running":
                    await client.run(store.set_worker_state, worker, state, now - 800)
                await client.run(store.put_telemetry, worker, "triage", now - age, data)

            await write("live", "running", 700, snapshot(5, [0.1]))  # old, but running
            await write("a", "stopped", 700, snapshot(3, [0.2, 0.3]))
            await write("b", "dead", 650, snapshot(2, [4.0]))
            await write("c", "stopped", 10, snapshot(1, []))  # gone, not for long yet
            before = await client.run(store.get_telemetry)
            assert await plane.retire_telemetry() == 2
            after = await client.run(store.get_telemetry)
            assert [r[0] for r in after] == ["c", "live", "retired/triage"]
            assert sums(after) == sums(before)
            retired = json.loads(after[-1][3])
            assert retired["g"] == {}  # a gone worker's gauges had stopped counting

            await write("d", "stopped", 700, snapshot(7, [0.5]))  # folds into the same row
            before = await client.run(store.get_telemetry)
            assert await plane.retire_telemetry() == 1
            after = await client.run(store.get_telemetry)
            assert [r[0] for r in after] == ["c", "live", "retired/triage"]
            assert sums(after) == sums(before)
            assert await plane.retire_telemetry() == 0

    asyncio.run(main())


def test_the_live_status_table_shows_unknown_counts_while_the_store_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The table `fleetops up` redraws every second: a store restarting must not end
    the command (and with it the fleet); the counts show as unknown meanwhile."""
    from rich.console import Console

    from fleetops import StoreError
    from fleetops.cli._fleet import _status_table
    from fleetops.store._sql import SqlStore

    plane = _plane(tmp_path)

    def refuse(self: SqlStore, *args: Any, **kwargs: Any) -> Any:
        raise StoreError("the store is restarting")

    async def main() -> tuple[str, str]:
        async with QueueClient(plane.store_url) as client:
            plane.client = client
            await client.submit(NewTask("triage", "classify"))
            fine = await _status_table(plane)
            monkeypatch.setattr(SqlStore, "count_tasks", refuse)
            plane._finished_counted_at = None  # due: the next call counts everything
            failing = await _status_table(plane)
        shown = []
        for table in (fine, failing):
            console = Console(width=200, record=True, file=io.StringIO())
            console.print(table)
            shown.append(console.export_text())
        return shown[0], shown[1]

    def row(text: str) -> list[str]:
        line = next(x for x in text.splitlines() if x.startswith("│ triage"))
        return [cell.strip() for cell in line.strip("│").split("│")]

    fine, failing = asyncio.run(main())
    assert row(fine) == ["triage", "0/1", "1", "0", "0", "0", "ok"]
    assert row(failing) == ["triage", "0/1", "?", "?", "?", "?", "ok"]
    assert "task counts unavailable: the store is restarting" in failing
