"""The fleet-wide operations sections: observability, alerting and recovery.

Their defaults are the values the project was seeded with: retention tiers of 24 hours
(high resolution), 7 days (medium) and 90 days (low); warning and critical thresholds
for the fleet metrics; escalation after 15 minutes (critical) and 60 minutes (warning);
the ``agent_failure``, ``cluster_failure``, ``network_partition`` and
``consensus_failure`` recovery strategies. Every value can be set on its own: a
section that sets one value keeps the defaults of the others.
"""

from __future__ import annotations

from datetime import time
from typing import Annotated, Literal

from pydantic import BaseModel, Field, Strict, model_validator

from ..runtime._supervisor import DEFAULT_SPARES
from ._clusters import WORKER_DEFAULTS
from ._types import (
    SPEC_CONFIG,
    Fraction,
    Number,
    PositiveCount,
    PositiveSeconds,
    Problem,
    TimeOfDay,
    WholeSeconds,
    count_schema,
    human_duration,
    raise_problems,
    seconds_at_least,
)

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
RecoveryAction = Literal[
    "redistribute_agent_workload",
    "restart_failed_agent",
    "spawn_replacement_agent",
    "notify_operations_team",
    "restart_cluster",
    "fence_stale_leases",
    "retry_consensus",
    "quarantine_faulty_agents",
]


# --- observability ------------------------------------------------------------------------------

_TIERS = ("high", "medium", "low")


class Retention(BaseModel):
    """How long metric history is kept at each resolution; coarser tiers are kept longer."""

    model_config = SPEC_CONFIG

    high: PositiveSeconds = 24 * 3600.0
    """High-resolution history is kept this long."""
    medium: PositiveSeconds = 7 * 86400.0
    """Medium-resolution history is kept this long."""
    low: PositiveSeconds = 90 * 86400.0
    """Low-resolution history is kept this long."""

    @model_validator(mode="after")
    def _longer_when_coarser(self) -> Retention:
        problems = []
        for finer, coarser in zip(_TIERS, _TIERS[1:], strict=False):
            kept, longer = getattr(self, finer), getattr(self, coarser)
            if longer <= kept:
                problems.append(
                    Problem(
                        (coarser,),
                        longer,
                        f"{coarser} history is kept no longer than {finer}",
                        f"keep it longer than {finer} ({human_duration(kept)})",
                    )
                )
        raise_problems(problems)
        return self


#: The shortest scrape step: each one reads every worker's metrics and writes them to
#: the history, so a shorter one would keep the control plane busy doing only that.
MIN_SCRAPE_STEP = 1.0


class Resolution(BaseModel):
    """The step between stored samples in each tier."""

    model_config = SPEC_CONFIG

    high: Annotated[
        PositiveSeconds,
        seconds_at_least(
            MIN_SCRAPE_STEP, "each step scrapes every worker and writes the history", 10.0
        ),
    ] = 10.0
    """How often the control plane scrapes the fleet's metrics into the history."""
    medium: Annotated[PositiveSeconds, WholeSeconds] = 60.0
    """The medium tier's bucket: one row per series per step."""
    low: Annotated[PositiveSeconds, WholeSeconds] = 3600.0
    """The low tier's bucket, made of whole medium buckets."""

    @model_validator(mode="after")
    def _coarser_in_order(self) -> Resolution:
        problems = []
        if self.medium < self.high:
            problems.append(
                Problem(
                    ("medium",),
                    self.medium,
                    "medium is finer than high",
                    f"use a step of at least {human_duration(self.high)}",
                )
            )
        if self.low <= self.medium or self.low % self.medium:
            problems.append(
                Problem(
                    ("low",),
                    self.low,
                    f"low is not a whole multiple of medium ({human_duration(self.medium)}) "
                    "wider than it: each low row is made of whole medium rows",
                    f"use a step of {human_duration(self.medium * 2)}, "
                    f"{human_duration(self.medium * 60)} or another multiple of "
                    f"{human_duration(self.medium)}",
                )
            )
        raise_problems(problems)
        return self


class ObservabilitySettings(BaseModel):
    """Metric history: how long each tier is kept and at what resolution; tracing."""

    model_config = SPEC_CONFIG

    retention: Retention = Retention()
    resolution: Resolution = Resolution()
    traces_per_second: Annotated[Number, Field(gt=0)] | None = WORKER_DEFAULTS.traces_per_second
    """New traces each worker records a second; a task of a recorded trace is always
    recorded; null records every task's."""

    @model_validator(mode="after")
    def _step_within_retention(self) -> ObservabilitySettings:
        problems = []
        for tier in _TIERS:
            step, kept = getattr(self.resolution, tier), getattr(self.retention, tier)
            if step >= kept:
                problems.append(
                    Problem(
                        ("resolution", tier),
                        step,
                        f"the step is not shorter than the time kept ({human_duration(kept)})",
                        f"use a step shorter than retention.{tier}",
                    )
                )
        raise_problems(problems)
        return self


# --- alerting -----------------------------------------------------------------------------------

CoordinationP95 = Annotated[
    Number, Field(gt=0, description="p95 of agent_coordination_efficiency above this alerts.")
]
ConsensusSuccess = Annotated[
    Fraction, Field(description="consensus_success_rate below this alerts.")
]
MessageLatencyP95 = Annotated[
    Number,
    Field(gt=0, description="p95 of message_delivery_latency above this (milliseconds) alerts."),
]
Utilization = Annotated[Fraction, Field(description="agent_utilization above this alerts.")]


class ThresholdLevel(BaseModel):
    """The values at which the fleet metrics raise an alert of one severity."""

    model_config = SPEC_CONFIG

    coordination_p95_seconds: CoordinationP95
    consensus_success_rate: ConsensusSuccess
    message_latency_p95_ms: MessageLatencyP95
    utilization: Utilization
    reasoning_chain_length_p95: PositiveCount | None = None
    """p95 of reasoning_chain_length above this alerts; no alert when left out."""
    planning_success_rate: Fraction | None = None
    """planning_success_rate below this alerts; no alert when left out."""


class WarningThresholds(ThresholdLevel):
    """Warning alerts; any value left out keeps its default."""

    coordination_p95_seconds: CoordinationP95 = 5.0
    consensus_success_rate: ConsensusSuccess = 0.85
    message_latency_p95_ms: MessageLatencyP95 = 1000.0
    utilization: Utilization = 0.80


class CriticalThresholds(ThresholdLevel):
    """Critical alerts; any value left out keeps its default."""

    coordination_p95_seconds: CoordinationP95 = 10.0
    consensus_success_rate: ConsensusSuccess = 0.70
    message_latency_p95_ms: MessageLatencyP95 = 5000.0
    utilization: Utilization = 0.95


_HIGHER_IS_WORSE = ("coordination_p95_seconds", "message_latency_p95_ms", "utilization")
_LOWER_IS_WORSE = ("consensus_success_rate", "planning_success_rate")


class AlertThresholds(BaseModel):
    """Warning and critical thresholds; critical must be at least as severe as warning."""

    model_config = SPEC_CONFIG

    warning: WarningThresholds = WarningThresholds()
    critical: CriticalThresholds = CriticalThresholds()

    @model_validator(mode="after")
    def _critical_is_worse(self) -> AlertThresholds:
        problems = []
        fields = _HIGHER_IS_WORSE + ("reasoning_chain_length_p95",) + _LOWER_IS_WORSE
        for field in fields:
            warning = getattr(self.warning, field)
            critical = getattr(self.critical, field)
            if warning is None or critical is None:
                continue
            if field in _LOWER_IS_WORSE and critical > warning:
                problems.append(
                    Problem(
                        ("critical", field),
                        critical,
                        f"critical is less severe than warning ({warning:g})",
                        f"use a value no higher than warning.{field}",
                    )
                )
            elif field not in _LOWER_IS_WORSE and critical < warning:
                problems.append(
                    Problem(
                        ("critical", field),
                        critical,
                        f"critical is less severe than warning ({warning:g})",
                        f"use a value no lower than warning.{field}",
                    )
                )
        raise_problems(problems)
        return self


class BusinessHours(BaseModel):
    """The working week; outside it is after hours."""

    model_config = SPEC_CONFIG

    timezone: Annotated[str, Field(strict=True, min_length=1)] = "UTC"
    """An IANA time zone name, e.g. Europe/Berlin."""
    days: Annotated[tuple[Weekday, ...], Field(min_length=1)] = ("mon", "tue", "wed", "thu", "fri")
    start: TimeOfDay = time(9, 0)
    """Local start of the working day, 'HH:MM'."""
    end: TimeOfDay = time(17, 0)
    """Local end of the working day, 'HH:MM'."""

    @model_validator(mode="after")
    def _check(self) -> BusinessHours:
        problems = []
        if not _known_timezone(self.timezone):
            problems.append(
                Problem(
                    ("timezone",),
                    self.timezone,
                    "unknown time zone",
                    "use an IANA time zone name such as UTC, Europe/Berlin or America/New_York",
                )
            )
        if self.end <= self.start:
            problems.append(
                Problem(
                    ("end",),
                    self.end.strftime("%H:%M"),
                    f"the working day ends before it starts ({self.start:%H:%M})",
                    "use an end time later than start",
                )
            )
        seen: set[str] = set()
        for index, day in enumerate(self.days):
            if day in seen:
                problems.append(Problem(("days", index), day, "day listed twice", "list it once"))
            seen.add(day)
        raise_problems(problems)
        return self


def _known_timezone(name: str) -> bool:
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        # Without a time zone database nothing can be checked; accept the name.
        return not zoneinfo.available_timezones()
    return True


class Escalation(BaseModel):
    """When an unacknowledged alert escalates to the next level."""

    model_config = SPEC_CONFIG

    critical_after: PositiveSeconds = 15 * 60.0
    """An unacknowledged critical alert escalates after this long."""
    warning_after: PositiveSeconds = 60 * 60.0
    """An unacknowledged warning escalates after this long."""
    business_hours: BusinessHours = BusinessHours()


class AlertingSettings(BaseModel):
    """Alert thresholds and escalation."""

    model_config = SPEC_CONFIG

    thresholds: AlertThresholds = AlertThresholds()
    escalation: Escalation = Escalation()


# --- recovery -----------------------------------------------------------------------------------

DetectWithin = Annotated[
    PositiveSeconds, Field(description="The failure must be detected within this long.")
]
Actions = Annotated[
    tuple[RecoveryAction, ...],
    Field(min_length=1, description="The recovery steps, run in this order."),
]


class RecoveryStrategy(BaseModel):
    """How fast a failure must be detected and the steps run, in order, to recover."""

    model_config = SPEC_CONFIG

    detect_within: DetectWithin
    actions: Actions

    @model_validator(mode="after")
    def _unique_actions(self) -> RecoveryStrategy:
        seen: set[str] = set()
        problems = []
        for index, action in enumerate(self.actions):
            if action in seen:
                problems.append(
                    Problem(("actions", index), action, "action listed twice", "list it once")
                )
            seen.add(action)
        raise_problems(problems)
        return self


#: More warm spares than this is a typo, not a plan (each is a process of ~50 MB).
MAX_SPARES = 16


class AgentFailureRecovery(RecoveryStrategy):
    """A worker died or stopped heartbeating (the supervisor's recovery, in its order)."""

    detect_within: DetectWithin = 30.0
    actions: Actions = (
        "redistribute_agent_workload",
        "restart_failed_agent",
        "spawn_replacement_agent",
        "notify_operations_team",
    )
    warm_spares: Annotated[
        int,
        Strict(),
        Field(ge=0, le=MAX_SPARES),
        count_schema(0, MAX_SPARES),  # Count's would say a billion
    ] = DEFAULT_SPARES
    """Worker processes kept started ahead for each cluster with workers, their
    imports done (the cluster's agents too), each to replace a dead worker of its
    cluster at once (about 50 MB each plus what the agents import; 0: every
    replacement starts cold; 16 at most, per cluster)."""


class ClusterFailureRecovery(RecoveryStrategy):
    """Every worker of a cluster is down."""

    detect_within: DetectWithin = 60.0
    actions: Actions = ("redistribute_agent_workload", "restart_cluster", "notify_operations_team")


class NetworkPartitionRecovery(RecoveryStrategy):
    """Workers cannot reach the store or each other."""

    detect_within: DetectWithin = 30.0
    actions: Actions = ("fence_stale_leases", "notify_operations_team")


class ConsensusFailureRecovery(RecoveryStrategy):
    """Agents failed to reach consensus."""

    detect_within: DetectWithin = 60.0
    actions: Actions = ("retry_consensus", "quarantine_faulty_agents", "notify_operations_team")


class RecoverySettings(BaseModel):
    """The recovery strategy for each kind of failure; a value left out keeps its default."""

    model_config = SPEC_CONFIG

    agent_failure: AgentFailureRecovery = AgentFailureRecovery()
    cluster_failure: ClusterFailureRecovery = ClusterFailureRecovery()
    network_partition: NetworkPartitionRecovery = NetworkPartitionRecovery()
    consensus_failure: ConsensusFailureRecovery = ConsensusFailureRecovery()
