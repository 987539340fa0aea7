"""What a running agent sees: its task, and durable ways to act."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry.trace import SpanKind

from .._exceptions import LeaseLost, UsageError
from .._json import dumps_strict
from ..queue._client import MAX_VALUE_BYTES, check_task, check_text, size_over_limit
from ..store import ClaimedTask, EffectBegin, EffectEnd, NewTask, SubmitChild
from ..telemetry import catalog
from ..telemetry._tracing import TRACEPARENT, current_traceparent

SENT_AT = "fleetops.sent_at"
SOURCE_CLUSTER = "fleetops.source_cluster"

if TYPE_CHECKING:
    from ..providers import ChatResponse
    from ._worker import Worker


class EffectNotJournaled(UsageError):
    """An effect ran but its result could not be journaled: its task fails for good
    (a retry would find the effect done, without the result it expects)."""


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """The task an agent is running."""

    id: int
    cluster: str
    agent: str
    payload: Any
    attempt: int
    epoch: int
    priority: int
    deadline: float | None
    parent_id: int | None
    headers: dict[str, Any]


@dataclass(frozen=True, slots=True)
class EffectCall:
    """Passed to an effect function that takes one argument.

    ``key`` is the same on every attempt of the task: hand it to the system you call
    as its idempotency key. ``fencing_token`` grows with every new lease holder: a
    system that remembers the largest token it has seen can refuse a stale holder.
    ``reexecution`` is True when an earlier holder started this effect and died
    before its result was journaled.
    """

    key: str
    fencing_token: int
    reexecution: bool


def split_address(address: str, default_cluster: str) -> tuple[str, str]:
    """``cluster/agent`` or ``agent`` (same cluster) → (cluster, agent)."""
    cluster, sep, name = address.rpartition("/")
    if not name:
        raise UsageError(f"agent address {address!r} is empty: write 'cluster/agent' or 'agent'")
    return (cluster if sep else default_cluster), name


class TaskLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger that stamps every record with the task, agent and cluster."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = dict(self.extra or {})
        extra.update(kwargs.pop("extra", {}) or {})
        kwargs["extra"] = {"fleetops": extra}
        return msg, kwargs


class Context:
    """Durable actions for one attempt of one task.

    Every write here is fenced by the attempt's lease epoch: once the lease is lost
    (the worker was presumed dead, or the task was cancelled) each call raises
    :class:`~fleetops.LeaseLost` and changes nothing.
    """

    def __init__(self, worker: Worker, claimed: ClaimedTask, info: TaskInfo) -> None:
        self._worker = worker
        self._claimed = claimed
        self.task = info
        self._journal = dict(claimed.journal)
        self._seq = 0
        self._log: TaskLogger | None = None
        #: one lock per effect key in use: calls of one key run one after another
        self._effect_locks: dict[str, asyncio.Lock] = {}

    @property
    def log(self) -> TaskLogger:
        """A logger whose records carry the task, agent and cluster (made on first use:
        most tasks never log, and a context is built for every attempt)."""
        if self._log is None:
            self._log = TaskLogger(
                logging.getLogger("fleetops.agent"),
                {"task_id": self.task.id, "agent": self.task.agent, "cluster": self.task.cluster},
            )
        return self._log

    def _next_key(self, kind: str, key: str | None) -> str:
        if key is not None:
            return f"task-{self.task.id}/{kind}/{key}"
        self._seq += 1
        return f"task-{self.task.id}/{kind}/{self._seq}"

    async def send(
        self,
        address: str,
        payload: Any = None,
        *,
        key: str | None = None,
        priority: int = 0,
        deadline: float | None = None,
    ) -> int:
        """Submit a child task to ``cluster/agent``; answer its id.

        The child is keyed by this task and the call's position (or ``key``), so a
        redelivered parent finds the child it already sent instead of sending another.
        """
        return await self._submit_child("send", address, payload, key, priority, deadline)

    async def call(
        self,
        address: str,
        payload: Any = None,
        *,
        key: str | None = None,
        priority: int = 0,
        deadline: float | None = None,
        poll_interval: float = 0.01,
    ) -> Any:
        """Submit a child task and wait for its result (raises TaskFailed if it fails).

        The child's deadline is at the latest this task's own: a result that comes
        after it is one nobody can use (this task fails at its deadline, for good),
        so the child is not run past it either. ``deadline`` may set an earlier one.
        """
        parent = self.task.deadline
        if parent is not None and (deadline is None or deadline > parent):
            deadline = parent
        child = await self._submit_child("call", address, payload, key, priority, deadline)
        return await self._worker.wait_for_result(child, self, poll_interval)

    async def _submit_child(
        self,
        kind: str,
        address: str,
        payload: Any,
        key: str | None,
        priority: int,
        deadline: float | None,
    ) -> int:
        cluster, name = split_address(address, self.task.cluster)
        routes = self._worker.routes
        if routes is not None and cluster not in routes:
            raise UsageError(
                f"cluster {self.task.cluster!r} has no route to {cluster!r}: add it to "
                f"clusters.{self.task.cluster}.routes in the fleet spec"
            )
        child = NewTask(
            queue=cluster,
            agent=name,
            payload=json.dumps(payload),
            priority=priority,
            deadline=deadline,
            idempotency_key=self._next_key(kind, key),
            parent_id=self.task.id,
            headers=json.dumps(
                {
                    **self.task.headers,
                    **({TRACEPARENT: parent} if (parent := current_traceparent()) else {}),
                    SENT_AT: self._worker.clock.now(),
                    SOURCE_CLUSTER: self.task.cluster,
                }
            ),
        )
        check_task(child)
        result = await self._worker.write_fenced(SubmitChild(self.task.id, self.task.epoch, child))
        if not result.ok:
            raise LeaseLost(self.task.id, self.task.epoch)
        self._worker.wake_claimer()
        submitted: Any = result.value
        return int(submitted.id)

    async def effect(self, key: str, fn: Callable[..., Any]) -> Any:
        """Run the side effect ``fn`` once for this task and ``key``; answer its result.

        ``fn`` may be sync or async, and takes no argument or one :class:`EffectCall`.
        Its result (JSON-serialisable) is journaled; a redelivered task gets the
        journaled result back without running ``fn`` again. If a holder died while
        ``fn`` was running, ``fn`` runs again with the same ``call.key``.

        Calls with the same ``key`` made at once (``asyncio.gather``) run one after
        another: the first runs ``fn``, the others get its journaled result (or, if
        it raised, the next one runs ``fn`` again, as a call made after it would).
        """
        journaled = self._journal.get(key)
        if journaled is not None and journaled[0] == "done":
            return json.loads(journaled[1] or "null")
        check_text("key", key)
        lock = self._effect_locks.get(key)
        if lock is None:
            lock = self._effect_locks[key] = asyncio.Lock()
        async with lock:
            journaled = self._journal.get(key)  # the call that held the lock may have run it
            if journaled is not None and journaled[0] == "done":
                return json.loads(journaled[1] or "null")
            return await self._run_effect(key, fn, journaled)

    async def _run_effect(
        self, key: str, fn: Callable[..., Any], journaled: tuple[str, str | None] | None
    ) -> Any:
        task_id, epoch = self.task.id, self.task.epoch
        begun = await self._worker.write_fenced(EffectBegin(task_id, epoch, key))
        if not begun.ok:
            raise LeaseLost(task_id, epoch)
        found: Any = begun.value
        if found is not None and found[0] == "done":
            return json.loads(found[1] or "null")
        call = EffectCall(
            key=f"task-{task_id}/effect/{key}",
            fencing_token=epoch,
            reexecution=found is not None or journaled is not None,
        )
        takes_call = len(inspect.signature(fn).parameters) >= 1
        outcome = fn(call) if takes_call else fn()
        if inspect.isawaitable(outcome):
            outcome = await outcome
        unjournaled: str | None = None
        cause: Exception | None = None
        try:
            encoded = dumps_strict(outcome)
        except (TypeError, ValueError) as exc:
            encoded, cause = "null", exc
            unjournaled = f"its result is not JSON-serialisable ({exc})"
        else:
            size = size_over_limit(encoded)
            if size is not None:
                encoded = "null"
                unjournaled = (
                    f"its result is {size:,} bytes of JSON, more than the "
                    f"{MAX_VALUE_BYTES:,} a result may take"
                )
        # the effect happened: if its result cannot be journaled, journal it as done
        # (with no result) so that no attempt runs it again, and fail the task for good
        ended = await self._worker.write_fenced(EffectEnd(task_id, epoch, key, encoded))
        if not ended.ok:
            raise LeaseLost(task_id, epoch)
        self._journal[key] = ("done", encoded)
        if unjournaled is not None:
            raise EffectNotJournaled(
                f"effect {key!r} ran, but {unjournaled}; it was journaled without its "
                "result and will not run again: return JSON values (dicts, lists, str, "
                "numbers) from effects, and keep large data elsewhere, returning its address"
            ) from cause
        return outcome

    async def llm(
        self,
        messages: Sequence[Any] | str,
        *,
        tools: Sequence[Any] = (),
        model: str | None = None,
        provider: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> ChatResponse:
        """Ask a model, through the fleet's gateway (breakers, retries, fallback, quota).

        ``messages`` are chat-completions style dicts (or one user message as a string);
        ``tools`` are OpenAI-style function specs. The call counts against this
        cluster's tokens-per-minute quota.
        """
        gateway = self._worker.gateway()
        name = model or "default"
        with self._worker.tracer.start_as_current_span(
            f"chat {name}",
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": provider or gateway.default,
                "gen_ai.request.model": name,
                "gen_ai.agent.name": self.task.agent,
                "fleetops.task.id": self.task.id,
                "fleetops.cluster": self.task.cluster,
            },
        ) as span:
            response = await gateway.chat(
                messages,
                cluster=self.task.cluster,
                provider=provider,
                model=model,
                tools=tools,
                temperature=temperature,
                max_tokens=max_tokens,
            )
            span.update_name(f"chat {response.model}")
            span.set_attributes(
                {
                    "gen_ai.provider.name": response.provider,
                    "gen_ai.response.model": response.model,
                    "gen_ai.usage.input_tokens": response.usage.input_tokens,
                    "gen_ai.usage.output_tokens": response.usage.output_tokens,
                    "gen_ai.response.finish_reasons": [response.finish_reason],
                }
            )
            return response

    @contextlib.asynccontextmanager
    async def tool(self, name: str, call_id: str | None = None) -> AsyncIterator[None]:
        """Trace a tool run: ``async with ctx.tool("search_kb", call.id): ...``."""
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": name,
            "gen_ai.agent.name": self.task.agent,
            "fleetops.task.id": self.task.id,
            "fleetops.cluster": self.task.cluster,
        }
        if call_id:
            attributes["gen_ai.tool.call.id"] = call_id
        with self._worker.tracer.start_as_current_span(
            f"execute_tool {name}", kind=SpanKind.INTERNAL, attributes=attributes
        ):
            yield

    # --- the seed's multi-agent metrics (docs/metrics.md) ----------------------------------

    def report_reasoning(self, steps: int) -> None:
        """A reasoning chain (e.g. a ReAct loop) took ``steps`` steps."""
        self._worker.metrics.observe(
            catalog.REASONING_CHAIN_LENGTH, (self.task.cluster, self.task.agent), steps
        )

    def report_plan(self, succeeded: bool) -> None:
        """A plan this agent made succeeded or failed."""
        rate = self._worker.outcome_rate(("plan", self.task.cluster, self.task.agent), succeeded)
        self._worker.metrics.set(
            catalog.PLANNING_SUCCESS_RATE, (self.task.cluster, self.task.agent), rate
        )

    def report_consensus(self, reached: bool) -> None:
        """A consensus round (a vote among agents) reached a decision, or did not."""
        rate = self._worker.outcome_rate(("consensus", self.task.cluster), reached)
        self._worker.metrics.set(catalog.CONSENSUS_SUCCESS_RATE, (self.task.cluster,), rate)

    @contextlib.asynccontextmanager
    async def coordinate(self, kind: str) -> AsyncIterator[None]:
        """Time a coordination among agents: ``async with ctx.coordinate("vote"): ...``."""
        began = self._worker.clock.monotonic()
        try:
            yield
        finally:
            self._worker.metrics.observe(
                catalog.AGENT_COORDINATION_EFFICIENCY,
                (self.task.cluster, kind),
                self._worker.clock.monotonic() - began,
            )

    def heartbeat(self) -> None:
        """Tell the worker this task is making progress (long CPU-bound steps)."""
        self._worker.note_progress(self.task.id)


EffectFn = Callable[[EffectCall], Awaitable[Any]] | Callable[[], Any]
