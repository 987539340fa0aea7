"""The HTTP API: a FastAPI app over one control plane."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .. import __version__
from .._exceptions import ConfigError, UnknownTask, UsageError
from .._units import parse_duration
from ..dashboard import mount_dashboard
from ..queue._client import MAX_VALUE_DEPTH, json_depth
from ..store import TASK_STATES, NewTask, TaskRecord
from ..store._models import MAX_AHEAD_SECONDS
from ..telemetry._logsearch import LogFilter, search_logs
from ..telemetry._tracing import TRACEPARENT, new_traceparent
from . import _problems
from ._metrics import render
from ._models import ApplyRequest, ApplyResponse, Submitted, TaskSubmit

if TYPE_CHECKING:
    from ..control import ControlPlane


def _shown_json(text: str | None) -> Any:
    """A stored JSON value as the answer carries it: parsed, or its text where it nests
    deeper than an answer can (an agent's result, or a payload stored before
    submits were checked for it)."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except RecursionError:
        return text
    return text if json_depth(value) > MAX_VALUE_DEPTH else value


def _task_json(record: TaskRecord) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": record.id,
        "cluster": record.queue,
        "agent": record.agent,
        "state": record.state,
        "priority": record.priority,
        "payload": _shown_json(record.payload),
        "result": _shown_json(record.result),
        "error": record.error,
        "dead_reason": record.dead_reason,
        "attempts": record.attempts,
        "failures": record.failures,
        "redeliveries": record.redeliveries,
        "epoch": record.epoch,
        "lease_owner": record.lease_owner,
        "idempotency_key": record.idempotency_key,
        "parent_id": record.parent_id,
        "deadline": record.deadline,
        "run_after": record.run_after,
        "created_at": record.created_at,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
    }
    return out


#: Task ids are 64-bit signed integers in both stores (INTEGER, BIGINT).
LARGEST_TASK_ID = 2**63 - 1


def check_task_id(task_id: int) -> int:
    """``task_id``, or UnknownTask for an id no store can hold (the store would fail
    to take it as a parameter, a 500)."""
    if not 1 <= task_id <= LARGEST_TASK_ID:
        raise UnknownTask(task_id)
    return task_id


def check_ahead(body: TaskSubmit, now: float) -> None:
    """Refuse a submit's delay, deadline_in, run_after or deadline more than
    :data:`MAX_AHEAD_SECONDS` (10 years) after ``now``: a mistake, and one whose task
    no listing could date."""
    years = MAX_AHEAD_SECONDS // (365 * 86400)
    for field in ("delay", "deadline_in"):
        seconds = getattr(body, field)
        if seconds is not None and seconds > MAX_AHEAD_SECONDS:
            raise ConfigError(
                field, seconds, f"use at most {MAX_AHEAD_SECONDS} seconds ({years} years)"
            )
    for field in ("run_after", "deadline"):
        at = getattr(body, field)
        if at is not None and at > now + MAX_AHEAD_SECONDS:
            raise ConfigError(
                field,
                at,
                f"use a time within {years} years from now, seconds since the epoch "
                f"up to {now + MAX_AHEAD_SECONDS:.0f}",
            )


def resolve_address(address: str, clusters: Mapping[str, Sequence[str]]) -> tuple[str, str]:
    """The (cluster, agent) a submit's ``cluster/agent`` names, given each cluster's
    agents; a ConfigError on ``agent`` that says what to write instead."""

    def example(cluster: str) -> str:
        agents = clusters[cluster]
        return f"e.g. {cluster}/{agents[0]} (its agents: {', '.join(agents)})"

    first = next(iter(clusters))
    if "/" not in address and address in clusters:
        raise ConfigError(
            "agent",
            address,
            f"{address!r} is a cluster: name one of its agents as 'cluster/agent', "
            + example(address),
        )
    if address.count("/") != 1:
        # the cluster it begins with, or one with an agent of that name, or any
        named = [c for c in clusters if address.split("/")[0] == c or address in clusters[c]]
        raise ConfigError(
            "agent",
            address,
            "write 'cluster/agent' with one '/', " + example(named[0] if named else first),
        )
    cluster, _, agent = address.partition("/")
    if cluster not in clusters:
        raise ConfigError(
            "agent",
            address,
            f"{cluster!r} names no cluster of this fleet: use one of {', '.join(clusters)} "
            f"as 'cluster/agent', {example(first)}",
        )
    if agent not in clusters[cluster]:
        raise ConfigError(
            "agent",
            address,
            f"cluster {cluster!r} has no agent {agent!r}: use one of {', '.join(clusters[cluster])}"
            if agent
            else "name one of its agents after the '/', " + example(cluster),
        )
    return cluster, agent


def create_app(plane: ControlPlane) -> FastAPI:
    """The API of ``plane``; the app factory, and the only place that knows the plane."""
    app = FastAPI(
        title="fleetops",
        version=__version__,
        description="Run, supervise and operate a multi-agent fleet.",
    )
    _problems.install(app)

    def client() -> Any:
        if plane.client is None:
            raise UsageError("the fleet is not deployed yet")
        return plane.client

    def known_agents(cluster: str | None, agent: str | None, found: bool = False) -> None:
        """Refuse a cluster, or an agent of it (of any cluster where none is given),
        that the fleet's spec does not name, when a listing or a bulk action found
        nothing by it: a misspelt one would find nothing and say nothing. One that
        finds tasks or events passes (``found``): a cluster or agent an apply took out
        of the spec leaves its tasks to be listed, cancelled or retried by its name."""
        if found:
            return
        clusters = plane.spec.clusters
        if cluster is None:
            every = sorted({a.name for c in clusters.values() for a in c.agents})
            if agent is not None and agent not in every:
                raise ConfigError(
                    "agent",
                    agent,
                    "the spec names no such agent, and nothing matched it: "
                    f"use an agent of the fleet: {', '.join(every)}",
                )
            return
        if cluster not in clusters:
            raise ConfigError(
                "cluster",
                cluster,
                f"the spec names no such cluster, and nothing matched it: "
                f"use one of {', '.join(clusters)}",
            )
        agents = [a.name for a in clusters[cluster].agents]
        if agent is not None and agent not in agents:
            raise ConfigError("agent", agent, f"use one of {cluster}'s agents: {', '.join(agents)}")

    async def no_body(request: Request) -> None:
        """Refuse a body sent to a bulk action: its filters are query parameters, and
        a body's would be ignored, acting on every task instead of those it names. An
        empty one (``{}``, ``null``, as generic clients send) names nothing: it passes."""
        body = (await request.body()).decode("utf-8", "replace").strip()
        try:
            empty = not body or json.loads(body) in ({}, None)
        except (ValueError, RecursionError):
            empty = False
        if not empty:
            shown = body if len(body) <= 80 else body[:77] + "..."
            raise ConfigError(
                "body",
                shown,
                f"send no body: put the filters in the query string, e.g. "
                f"{request.url.path}?cluster=...&agent=...",
            )

    async def known_task(c: Any, task_id: int) -> TaskRecord:
        record: TaskRecord | None = await c.run(c.store.get_task, check_task_id(task_id))
        if record is None:
            raise UnknownTask(task_id)
        return record

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """The API process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz() -> JSONResponse:
        """200 once the fleet is deployed and every desired worker heartbeats, else 503."""
        sup = plane.supervisor
        ready = (
            plane.deployed
            and sup is not None
            and all(
                sum(1 for h in sup.live_workers(c) if h.first_heartbeat_at)
                >= plane.desired_replicas(c)
                for c in plane.spec.clusters
            )
        )
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["health"], response_class=Response)
    async def metrics() -> Response:
        """Prometheus metrics of the whole fleet."""
        return Response(await render(plane), media_type=CONTENT_TYPE_LATEST)

    @app.post("/api/v1/tasks", status_code=201, response_model=Submitted, tags=["tasks"])
    async def submit(body: TaskSubmit) -> Submitted:
        """Submit a task to ``cluster/agent``; an idempotency key returns the same task."""
        cluster, agent = resolve_address(
            body.agent,
            {name: [a.name for a in c.agents] for name, c in plane.spec.clusters.items()},
        )
        now = plane.clock.now()  # delay and deadline_in count from here
        check_ahead(body, now)
        task = NewTask(
            queue=cluster,
            agent=agent,
            payload=json.dumps(body.payload),
            priority=body.priority,
            deadline=body.deadline if body.deadline_in is None else now + body.deadline_in,
            idempotency_key=body.idempotency_key,
            max_attempts=body.max_attempts,
            headers=json.dumps({TRACEPARENT: new_traceparent()}),
            run_after=body.run_after if body.delay is None else now + body.delay,
        )
        done = await client().submit(task)
        return Submitted(id=done.id, created=done.created)

    @app.get("/api/v1/tasks/{task_id}", tags=["tasks"])
    async def get_task(task_id: int) -> dict[str, Any]:
        """One task, with every attempt and its effects journal."""
        c = client()
        out = _task_json(await known_task(c, task_id))
        out["attempt_history"] = [_attempt(a) for a in await c.run(c.store.attempts, task_id)]
        out["effects"] = [_effect(e) for e in await c.run(c.store.effects, task_id)]
        return out

    @app.post("/api/v1/tasks/{task_id}/cancel", tags=["tasks"])
    async def cancel(task_id: int, reason: str = "cancelled through the API") -> dict[str, Any]:
        """Cancel a queued or running task (a running one's holder is fenced off), and
        with it every queued or running task it sent, and theirs
        (``descendants_cancelled``): nothing is left running for a result nobody
        waits for."""
        c = client()
        record = await known_task(c, task_id)
        cancelled = await c.run(c.store.cancel_tree, task_id, c.clock.now(), reason)
        if cancelled:
            # one event for the tree (a fan-out may have sent thousands): each
            # descendant's own reason names the task it was cancelled with
            now = c.clock.now()
            data = json.dumps({"reason": reason, "descendants": cancelled[1:]})
            await c.run(
                c.store.record_event, "task.cancelled", now, record.queue, None, task_id, data
            )
        return {"id": task_id, "cancelled": bool(cancelled), "descendants_cancelled": cancelled[1:]}

    @app.post("/api/v1/tasks/cancel-queued", tags=["tasks"])
    async def cancel_queued(
        request: Request,
        cluster: str = Query(..., description="the cluster whose queue to empty"),
        agent: str | None = None,
        limit: int = Query(1000, ge=1, le=10_000),
        after: int | None = Query(
            None, ge=0, le=LARGEST_TASK_ID, description="page after this task id"
        ),
        reason: str = "queue emptied through the API",
    ) -> dict[str, Any]:
        """Cancel the oldest ``limit`` queued tasks of ``cluster`` (of ``agent`` where
        given) after task ``after``, each with the tasks it sent, as
        ``POST /tasks/{id}/cancel`` does, in one transaction: a flood of unwanted
        work taken out of the queue. A task that is running, or that a worker claims
        meanwhile, is left to finish. ``tasks`` lists those cancelled; ``next_after``,
        when not null, is where the next page starts."""
        await no_body(request)
        c = client()
        listed = await c.run(c.store.list_task_ids, "queued", cluster, agent, limit, after)
        known_agents(cluster, agent, bool(listed) or after is not None)
        now = c.clock.now()
        trees = await c.run(partial(c.store.cancel_many, listed, now, reason, queued_only=True))
        cancelled = [tree[0] for tree in trees]
        descendants = sorted(i for tree in trees for i in tree[1:])
        if cancelled:
            data = json.dumps(
                {"reason": reason, "tasks": cancelled, "descendants": descendants, "agent": agent}
            )
            await c.run(c.store.record_event, "tasks.cancelled", now, cluster, None, None, data)
        return {
            "tasks": cancelled,
            "descendants_cancelled": descendants,
            "next_after": listed[-1] if len(listed) == limit else None,
        }

    @app.post("/api/v1/tasks/retry-dead", tags=["tasks"])
    async def retry_dead_letters(
        request: Request,
        cluster: str | None = None,
        agent: str | None = None,
        limit: int = Query(1000, ge=1, le=10_000),
        after: int | None = Query(
            None, ge=0, le=LARGEST_TASK_ID, description="page after this task id"
        ),
    ) -> dict[str, Any]:
        """Queue again the oldest ``limit`` dead letters (of ``cluster`` and ``agent``
        where given) after task ``after``, each as ``POST /tasks/{id}/retry`` does, in
        one transaction: once a cause that killed many is fixed. ``tasks`` lists
        them; ``next_after``, when not null, is where the next page starts (a letter
        retried here that dies again keeps its id, so the pages after it do not meet
        it again; a dead child queued again with its parent has an id of its own)."""
        await no_body(request)
        c = client()
        listed = await c.run(c.store.list_task_ids, "dead", cluster, agent, limit, after)
        known_agents(cluster, agent, bool(listed) or after is not None)
        now = c.clock.now()
        retried = await c.run(c.store.retry_dead_many, listed, now)
        if retried:
            data = json.dumps({"tasks": retried, "agent": agent})
            await c.run(c.store.record_event, "tasks.retried", now, cluster, None, None, data)
        return {"tasks": retried, "next_after": listed[-1] if len(listed) == limit else None}

    @app.post("/api/v1/tasks/{task_id}/retry", tags=["tasks"])
    async def retry(task_id: int) -> dict[str, Any]:
        """Queue a dead letter again with its full budget of attempts (once its cause is
        fixed). Its attempts and effect journal stay: an effect done is not run again.
        409 when the task is not dead."""
        c = client()
        record = await known_task(c, task_id)
        if not await c.run(c.store.retry_dead, task_id, c.clock.now()):
            record = await c.run(c.store.get_task, task_id)
            state = record.state if record is not None else "gone"
            raise HTTPException(
                409,
                f"task {task_id} is {state}, not dead: only a dead letter can be retried "
                "(submit a new task to run it again)",
            )
        await c.run(
            c.store.record_event, "task.retried", c.clock.now(), record.queue, None, task_id
        )
        return {"id": task_id, "state": "queued"}

    @app.get("/api/v1/tasks", tags=["tasks"])
    async def list_tasks(
        state: str | None = Query(None, description=f"one of {', '.join(TASK_STATES)}"),
        cluster: str | None = None,
        agent: str | None = None,
        limit: int = Query(100, ge=1, le=1000),
        after: int | None = Query(
            None, ge=0, le=LARGEST_TASK_ID, description="page after this task id"
        ),
        newest: bool = Query(False, description="newest first (the ids in descending order)"),
        before: int | None = Query(
            None, ge=1, le=LARGEST_TASK_ID, description="newest first, from before this task id"
        ),
    ) -> dict[str, Any]:
        """Tasks filtered by state, cluster and agent: oldest first, the first ``limit``
        after task ``after`` where given, and ``next_after``, when not null, where the
        next page starts; with ``newest=true``, newest first, and with ``before``, the
        newest ``limit`` before that task, ``next_before`` where the next (older) page
        starts."""
        if state is not None and state not in TASK_STATES:
            raise UsageError(
                f"state: {state!r} is not a task state: use one of {', '.join(TASK_STATES)}"
            )
        descending = newest or before is not None
        if descending and after is not None:
            raise ConfigError(
                "after",
                after,
                "page oldest first with after, or newest first with newest or before; not both",
            )
        c = client()
        records = await c.run(
            partial(
                c.store.list_tasks,
                state,
                cluster,
                agent,
                limit + 1,  # one more: whether there is a next page to point to
                after,
                before_id=before,
                newest=descending,
            )
        )
        # a misspelt cluster or agent would list nothing, and say nothing
        paging = after is not None or before is not None
        known_agents(cluster, agent, bool(records) or paging)
        items = [_task_json(r) for r in records[:limit]]
        last = items[-1]["id"] if len(records) > limit else None
        return {
            "items": items,
            "next_after": None if descending else last,
            "next_before": last if descending else None,
        }

    @app.get("/api/v1/clusters", tags=["fleet"])
    async def clusters() -> list[dict[str, Any]]:
        """Every cluster: workers desired and live, health, quotas, queue."""
        client()  # the fleet is deployed
        counts = await plane.task_counts()
        sup = plane.supervisor
        out = []
        for name, spec in plane.spec.clusters.items():
            states = {s: 0 for s in TASK_STATES}
            for (queue, _, state), n in counts.items():
                if queue == name:
                    states[state] += n
            live = sup.live_workers(name) if sup else []
            out.append(
                {
                    "name": name,
                    "agents": [a.name for a in spec.agents],
                    "desired_workers": plane.desired_replicas(name),
                    "live_workers": len(live),
                    "heartbeating_workers": sum(1 for h in live if h.first_heartbeat_at),
                    "degraded": bool(sup and name in sup.degraded),
                    "concurrency": spec.concurrency,
                    "routes": list(spec.routes),
                    "provider": spec.provider,
                    "resource_quotas": spec.resource_quotas.model_dump(mode="json"),
                    "tasks": states,
                }
            )
        return out

    @app.get("/api/v1/events", tags=["fleet"])
    async def events(
        kind: str | None = Query(None, description="e.g. worker.failed or task.cancelled"),
        cluster: str | None = None,
        after: int | None = Query(
            None, ge=0, le=LARGEST_TASK_ID, description="the events after this one, oldest first"
        ),
        limit: int = Query(100, ge=1, le=1000),
    ) -> dict[str, Any]:
        """What happened to the fleet, in order: workers started, failed, suspected and
        replaced, each step of the ``agent_failure`` recovery, clusters degraded and
        recovered, tasks cancelled and retried. With ``after``, the first ``limit``
        after that event, and ``next_after``, when not null, where the next page
        starts (as the other listings page); without it, the newest ``limit``. To
        follow new ones, ask again with ``after`` the last id seen. Kinds are open-ended
        (a recovery step's is ``agent_failure.`` and the step): an unknown one finds
        none; an unknown cluster that finds none is refused."""
        c = client()
        found = await c.run(
            partial(
                c.store.list_events,
                kind,
                after or 0,
                limit,
                cluster=cluster,
                newest=after is None,
            )
        )
        known_agents(cluster, None, bool(found) or after is not None)
        items = [
            {
                "id": e.id,
                "at": e.at,
                "kind": e.kind,
                "cluster": e.cluster,
                "worker": e.worker,
                "task_id": e.task_id,
                "data": json.loads(e.data or "{}"),
            }
            for e in found
        ]
        full = after is not None and len(items) == limit
        return {"items": items, "next_after": items[-1]["id"] if full else None}

    @app.get("/api/v1/workers", tags=["fleet"])
    async def workers(cluster: str | None = None, live: bool = False) -> list[dict[str, Any]]:
        """The workers the store knows, by id: live, stopped and dead (those gone for
        ``observability.retention.high`` are forgotten); ``live=true``: only those
        running or draining."""
        c = client()
        return [_worker(w) for w in await c.run(c.store.list_workers, cluster, None, live)]

    @app.get("/api/v1/deployments", tags=["fleet"])
    async def deployments(limit: int = Query(20, ge=1, le=200)) -> list[dict[str, Any]]:
        """Deployments, newest first, with their phases and readiness."""
        c = client()
        rows = await c.run(c.store.list_deployments, limit)
        return [
            {
                "id": d.id,
                "started_at": d.started_at,
                "finished_at": d.finished_at,
                "fleet": d.fleet,
                "spec_hash": d.spec_hash,
                "actor": d.actor,
                "state": d.state,
                "failed_phase": d.failed_phase,
                "error": d.error,
                "phases": json.loads(d.phases),
                "readiness": json.loads(d.readiness) if d.readiness else None,
            }
            for d in rows
        ]

    @app.get("/api/v1/changes", tags=["fleet"])
    async def changes(
        limit: int = Query(100, ge=1, le=1000),
        after: int = Query(0, ge=0, le=LARGEST_TASK_ID, description="page after this change id"),
    ) -> list[dict[str, Any]]:
        """The change log: every deploy and apply, with actor, time, reason and diff."""
        c = client()
        rows = await c.run(c.store.list_changes, limit, after)
        return [
            {
                "id": r.id,
                "at": r.at,
                "actor": r.actor,
                "kind": r.kind,
                "subject": r.subject,
                "reason": r.reason,
                "diff": json.loads(r.diff),
            }
            for r in rows
        ]

    @app.post("/api/v1/apply", response_model=ApplyResponse, tags=["fleet"])
    async def apply(body: ApplyRequest) -> ApplyResponse:
        """Change the running fleet to this spec: scale, add or remove clusters, roll out."""
        result = await plane.apply(
            body.spec, actor=body.actor, reason=body.reason, rollout=tuple(body.rollout)
        )
        return ApplyResponse(change_id=result.change_id, diff=result.diff, actions=result.actions)

    @app.get("/api/v1/metrics/query", tags=["observability"])
    async def metrics_query(
        metric: str = Query(..., description="a metric of the catalogue, e.g. agent_utilization"),
        fn: str = Query(
            "avg",
            description="raw, avg, min, max, sum, count, last, rate, "
            "increase, or p50/p90/p95/p99 of a histogram",
        ),
        by: str | None = Query(None, description="labels to group by, comma-separated"),
        range_: str = Query("15m", alias="range", description="how far back, e.g. 15m or 1h"),
        step: str = Query("10s", description="the step between points, e.g. 10s"),
        match: list[str] = Query([], description="label=value matchers"),
    ) -> dict[str, Any]:
        """The metric's history: one series per label set (or per ``by`` group)."""
        history = plane.history
        if history is None:
            return {"series": []}
        span = parse_duration(range_, "range")
        every = parse_duration(step, "step")
        if every <= 0 or span <= 0:
            raise UsageError("range and step: use durations above zero, e.g. range=15m step=10s")
        matchers = {}
        for item in match:
            name, sep, value = item.partition("=")
            if not sep:
                raise UsageError(f"match: {item!r} is not label=value")
            matchers[name] = value
        groups = [g for g in (by or "").split(",") if g] or None
        end = plane.clock.now()
        start = end - span
        if fn.startswith("p") and fn[1:].isascii() and fn[1:].isdigit() and len(fn) <= 4:
            q = int(fn[1:]) / 100
            found = await asyncio.to_thread(
                history.histogram_quantile, q, metric, matchers, start, end, every, by=groups
            )
        else:
            found = await asyncio.to_thread(
                history.query_range, metric, matchers, start, end, every, fn, by=groups
            )
        return {"series": [{"labels": s.labels, "points": s.points} for s in found]}

    @app.get("/api/v1/traces", tags=["observability"])
    async def traces(
        task_id: int | None = None,
        trace_id: str | None = None,
        limit: int = Query(2000, ge=1, le=20000),
    ) -> dict[str, Any]:
        """Every span of the trace(s) a task took part in, or of one trace, by start time."""
        if task_id is None and trace_id is None:
            raise UsageError("task_id or trace_id: give one, e.g. /api/v1/traces?task_id=12")
        if task_id is not None:
            check_task_id(task_id)
        c = client()
        rows = await c.run(c.store.get_spans, trace_id, task_id, limit)
        return {"spans": [_span(r) for r in rows]}

    @app.get("/api/v1/logs", tags=["observability"])
    async def logs(
        q: str | None = None,
        level: str | None = None,
        task_id: int | None = None,
        cluster: str | None = None,
        trace_id: str | None = None,
        limit: int = Query(200, ge=1, le=5000),
    ) -> dict[str, Any]:
        """Structured log records of every process of the fleet, newest first."""
        where = LogFilter(text=q, level=level, task_id=task_id, cluster=cluster, trace_id=trace_id)
        items = await asyncio.to_thread(search_logs, plane.log_dir, where, limit)
        return {"items": items}

    @app.get("/api/v1/alerts", tags=["operations"])
    async def alerts() -> dict[str, Any]:
        """Firing alerts (the alert engine fills this)."""
        return {"items": []}

    @app.get("/api/v1/incidents", tags=["operations"])
    async def incidents() -> dict[str, Any]:
        """Open incidents (the alert engine fills this)."""
        return {"items": []}

    @app.get("/api/v1/readiness", tags=["fleet"])
    async def readiness() -> dict[str, Any]:
        """The production-readiness score now, check by check."""
        return (await plane.readiness()).as_dict()

    mount_dashboard(app)
    return app


SPAN_FIELDS = (
    "trace_id",
    "span_id",
    "parent_span_id",
    "name",
    "kind",
    "start_time",
    "end_time",
    "status",
    "task_id",
    "cluster",
    "agent",
    "attributes",
)


def _span(row: tuple[Any, ...]) -> dict[str, Any]:
    out = dict(zip(SPAN_FIELDS, row, strict=True))
    out["attributes"] = json.loads(out["attributes"] or "{}")
    return out


def _attempt(a: Any) -> dict[str, Any]:
    return dataclasses.asdict(a)


def _effect(e: Any) -> dict[str, Any]:
    out = dataclasses.asdict(e)
    if out.get("result") is not None:
        out["result"] = json.loads(out["result"])
    return out


def _worker(w: Any) -> dict[str, Any]:
    return dataclasses.asdict(w)
