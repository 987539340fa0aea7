"""A cluster in the spec: its agents, replicas, quotas, health checks, routes and scaling.

Defaults come from the runtime's own settings objects, so the spec and the runtime
cannot drift apart; each model builds the runtime object it describes.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, Strict, model_validator

from ..queue import RetryPolicy
from ..runtime import DetectorSettings, RestartPolicy, WorkerSettings
from ._providers import BUILTIN_PROVIDER
from ._types import (
    MAX_COUNT,
    SPEC_CONFIG,
    Count,
    EntryPoint,
    Name,
    Number,
    PositiveCount,
    PositiveSeconds,
    Problem,
    Seconds,
    count_at_most,
    count_schema,
    human_duration,
    raise_problems,
    seconds_at_least,
)

_RETRY = RetryPolicy()
#: The runtime's worker defaults, which the spec's defaults follow.
WORKER_DEFAULTS = WorkerSettings()
_DETECTOR = DetectorSettings()
_RESTART = RestartPolicy()

DEFAULT_REPLICAS = 1
#: The most replicas a cluster may run or scale to (and its max_agents): each one is
#: an operating-system process.
MAX_REPLICAS = 1000
#: The most tasks one worker may run at once: each holds a lease it extends on every
#: heartbeat, and its coroutine and payload in memory.
MAX_CONCURRENCY = 10_000

_PROCESSES = "each replica is an operating-system process"
Replicas = Annotated[
    int,
    Strict(),
    Field(ge=0),
    count_at_most(0, MAX_REPLICAS, _PROCESSES),
    count_schema(0, MAX_REPLICAS),
]
PositiveReplicas = Annotated[
    int,
    Strict(),
    Field(ge=1),
    count_at_most(1, MAX_REPLICAS, _PROCESSES),
    count_schema(1, MAX_REPLICAS),
]
Concurrency = Annotated[
    int,
    Strict(),
    Field(ge=1),
    count_at_most(
        1, MAX_CONCURRENCY, "each task of a worker holds a lease it extends on every heartbeat"
    ),
    count_schema(1, MAX_CONCURRENCY),
]
#: The shortest heartbeat interval: every beat of every worker is a store write.
MIN_HEARTBEAT_INTERVAL = 0.05


def _check_backoff(base: float, most: float) -> None:
    """Backoff settings are consistent: the longest wait is no shorter than the first."""
    if most < base:
        raise_problems(
            [
                Problem(
                    ("backoff_max",),
                    most,
                    f"backoff_max is below backoff_base ({human_duration(base)})",
                    "use a backoff_max no smaller than backoff_base",
                )
            ]
        )


class RetrySettings(BaseModel):
    """Retry policy for one agent's tasks (see :class:`fleetops.RetryPolicy`)."""

    model_config = SPEC_CONFIG

    max_attempts: PositiveCount = _RETRY.max_attempts
    """Failed attempts (the handler raised or timed out) before the task is dead-lettered."""
    backoff_base: Seconds = _RETRY.backoff_base
    """The first retry waits up to this long; each later one up to twice as long."""
    backoff_max: Seconds = _RETRY.backoff_max
    """No retry waits longer than this."""
    max_redeliveries: Count = _RETRY.max_redeliveries
    """Attempts lost to a dying worker before the task is dead-lettered as poison."""

    @model_validator(mode="after")
    def _check(self) -> RetrySettings:
        _check_backoff(self.backoff_base, self.backoff_max)
        return self

    def policy(self) -> RetryPolicy:
        return RetryPolicy(
            max_attempts=self.max_attempts,
            backoff_base=self.backoff_base,
            backoff_max=self.backoff_max,
            max_redeliveries=self.max_redeliveries,
        )


class AgentDefinition(BaseModel):
    """One agent of a cluster: its name and the async function that implements it."""

    model_config = SPEC_CONFIG

    name: Name
    """The agent's name; tasks are addressed to 'cluster/name'."""
    entrypoint: EntryPoint
    """'package.module:function'; modules next to the spec file import."""
    timeout: PositiveSeconds | None = None
    """Per-attempt timeout; none when left out."""
    retry: RetrySettings | None = None
    """Overrides the retry policy the agent was registered with."""


class ResourceQuotas(BaseModel):
    """Upper bounds for one cluster; a limit left out is unbounded."""

    model_config = SPEC_CONFIG

    max_agents: PositiveReplicas | None = None
    """Most replicas (worker processes hosting this cluster's agents) ever running."""
    max_concurrent_tasks: PositiveCount | None = None
    """Most tasks of this cluster running at once, across all its workers."""
    tokens_per_minute: PositiveCount | None = None
    """LLM tokens (prompt + completion) per minute across the cluster."""
    cost_per_hour: Annotated[Number, Field(ge=0)] | None = None
    """LLM spend per hour, priced with the provider's pricing."""


class FailureDetectorSettings(BaseModel):
    """The phi-accrual failure detector watching worker heartbeats."""

    model_config = SPEC_CONFIG

    threshold: Annotated[Number, Field(gt=0)] = _DETECTOR.threshold
    """Suspect a worker when phi exceeds this (8 means a 1e-8 chance of a false alarm)."""
    min_std: PositiveSeconds = _DETECTOR.min_std
    """Floor for the learned heartbeat interval deviation."""
    acceptable_pause: Seconds = _DETECTOR.acceptable_pause
    """Heartbeat silence tolerated before phi starts rising."""
    window: Annotated[
        int,
        Strict(),
        Field(ge=2),
        count_at_most(2, MAX_COUNT, "larger counts overflow the store's integers"),
        count_schema(2, MAX_COUNT),
    ] = _DETECTOR.window
    """Heartbeat intervals remembered."""


class RestartSettings(BaseModel):
    """How the supervisor restarts a cluster's failed workers."""

    model_config = SPEC_CONFIG

    intensity: PositiveCount = _RESTART.intensity
    """More restarts than this within 'period' mark the cluster degraded."""
    period: PositiveSeconds = _RESTART.period
    backoff_base: Seconds = _RESTART.backoff_base
    backoff_max: Seconds = _RESTART.backoff_max

    @model_validator(mode="after")
    def _check(self) -> RestartSettings:
        _check_backoff(self.backoff_base, self.backoff_max)
        return self


class HealthChecks(BaseModel):
    """Heartbeats, leases, failure detection and restarts for one cluster."""

    model_config = SPEC_CONFIG

    heartbeat_interval: Annotated[
        PositiveSeconds,
        seconds_at_least(
            MIN_HEARTBEAT_INTERVAL,
            "each beat is a write to the store by every worker",
            WORKER_DEFAULTS.heartbeat_interval,
        ),
    ] = WORKER_DEFAULTS.heartbeat_interval
    """How often a worker heartbeats and extends its leases (50ms at the least)."""
    lease_timeout: PositiveSeconds = WORKER_DEFAULTS.lease_seconds
    """A task whose lease is not extended within this long goes back to the queue."""
    failure_detector: FailureDetectorSettings = FailureDetectorSettings()
    restart: RestartSettings = RestartSettings()

    @model_validator(mode="after")
    def _check(self) -> HealthChecks:
        if self.lease_timeout < 2 * self.heartbeat_interval:
            raise_problems(
                [
                    Problem(
                        ("lease_timeout",),
                        self.lease_timeout,
                        "the lease would expire before two heartbeats could extend it",
                        "use at least twice heartbeat_interval "
                        f"({human_duration(self.heartbeat_interval)})",
                    )
                ]
            )
        return self


class ScalingBounds(BaseModel):
    """The range the autoscaler keeps a cluster's replicas in."""

    model_config = SPEC_CONFIG

    min_replicas: Replicas = DEFAULT_REPLICAS
    max_replicas: PositiveReplicas


class ClusterSpec(BaseModel):
    """A named pool of agents with its own quotas, health checks and scaling bounds."""

    model_config = SPEC_CONFIG

    agents: Annotated[tuple[AgentDefinition, ...], Field(min_length=1)]
    replicas: Replicas = DEFAULT_REPLICAS
    """Worker processes to run (the autoscaler moves it within 'scaling')."""
    concurrency: Concurrency = WORKER_DEFAULTS.concurrency
    """Tasks one worker runs at once."""
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"
    """The workers' event loop: uvloop where installed ('auto'), or asyncio's, whose
    timers never fire early."""
    max_worker_memory_mb: PositiveCount | None = None
    """A worker whose resident memory passes this many MiB stops claiming, drains and
    is replaced, not counted as a failure (leave out: no limit)."""
    resource_quotas: ResourceQuotas = ResourceQuotas()
    health_checks: HealthChecks = HealthChecks()
    routes: tuple[Name, ...] = ()
    """Clusters this cluster's agents may send tasks to."""
    provider: Name = BUILTIN_PROVIDER
    """The provider behind ctx.llm for this cluster's agents."""
    scaling: ScalingBounds | None = None
    """Leave out to keep 'replicas' fixed."""

    @model_validator(mode="after")
    def _check(self) -> ClusterSpec:
        problems: list[Problem] = []
        seen: dict[str, int] = {}
        for index, agent in enumerate(self.agents):
            if agent.name in seen:
                problems.append(
                    Problem(
                        ("agents", index, "name"),
                        agent.name,
                        f"agent name used twice in this cluster (also agents[{seen[agent.name]}])",
                        "give every agent of a cluster its own name",
                    )
                )
            seen.setdefault(agent.name, index)
        for index, route in enumerate(self.routes):
            if route in self.routes[:index]:
                problems.append(
                    Problem(("routes", index), route, "route listed twice", "list once")
                )
        max_agents = self.resource_quotas.max_agents
        if max_agents is not None and self.replicas > max_agents:
            problems.append(
                Problem(
                    ("replicas",),
                    self.replicas,
                    f"more replicas than resource_quotas.max_agents ({max_agents})",
                    f"use at most {max_agents} replicas or raise max_agents",
                )
            )
        if self.scaling is not None:
            problems += self._scaling_problems(self.scaling, max_agents)
        raise_problems(problems)
        return self

    def _scaling_problems(self, scaling: ScalingBounds, max_agents: int | None) -> list[Problem]:
        low, high = scaling.min_replicas, scaling.max_replicas
        if low > high:
            return [
                Problem(
                    ("scaling", "min_replicas"),
                    low,
                    f"min_replicas is above max_replicas ({high})",
                    "use a min_replicas no larger than max_replicas",
                )
            ]
        problems = []
        if max_agents is not None and high > max_agents:
            problems.append(
                Problem(
                    ("scaling", "max_replicas"),
                    high,
                    f"max_replicas is above resource_quotas.max_agents ({max_agents})",
                    f"use at most {max_agents} or raise max_agents",
                )
            )
        if not low <= self.replicas <= high:
            problems.append(
                Problem(
                    ("replicas",),
                    self.replicas,
                    f"replicas is outside scaling bounds {low}..{high}",
                    f"use a value from {low} to {high}",
                )
            )
        return problems

    def worker_settings(self) -> WorkerSettings:
        return WorkerSettings(
            concurrency=self.concurrency,
            event_loop=self.event_loop,
            heartbeat_interval=self.health_checks.heartbeat_interval,
            lease_seconds=self.health_checks.lease_timeout,
            max_memory_mb=self.max_worker_memory_mb,
        )

    def detector_settings(self) -> DetectorSettings:
        detector = self.health_checks.failure_detector
        return DetectorSettings(
            threshold=detector.threshold,
            min_std=detector.min_std,
            acceptable_pause=detector.acceptable_pause,
            window=detector.window,
        )

    def restart_policy(self) -> RestartPolicy:
        restart = self.health_checks.restart
        return RestartPolicy(
            backoff_base=restart.backoff_base,
            backoff_max=restart.backoff_max,
            intensity=restart.intensity,
            period=restart.period,
        )
